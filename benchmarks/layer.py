"""Training throughput of BLN vs Keras BatchNormalization and LayerNormalization.

Run: python benchmarks/layer.py [--repeats 5] [--samples 4096]

The same small CNN (and GRU) is built three times, differing only in the
normalization layer. The models are timed round-robin (A B C A B C ...) in one
process, so machine noise hits all three alike; the table reports the median
throughput of each and its ratio to the BatchNormalization model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from bln_search import BatchLayerNormalization, ResetPopulationStatistics  # noqa: E402

NORMALIZATIONS = {
    "BLN": lambda: BatchLayerNormalization(),
    "BatchNormalization": lambda: keras.layers.BatchNormalization(),
    "LayerNormalization": lambda: keras.layers.LayerNormalization(),
}


def cnn(norm):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same"),
            norm(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(32, 3, padding="same"),
            norm(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def rnn(norm):
    return keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Dense(32),
            norm(),
            keras.layers.GRU(32),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def data(samples, sequence):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")
    reps = -(-samples // len(x))
    x = np.concatenate([x] * reps)[:samples]
    y = np.concatenate([digits.target] * reps)[:samples].astype("int32")
    return (x if sequence else x[..., None]), y


def measure(architecture, samples, batch_size, repeats):
    x, y = data(samples, sequence=architecture is rnn)
    models = {}
    for name, norm in NORMALIZATIONS.items():
        keras.utils.set_random_seed(0)
        model = architecture(norm)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        callbacks = [ResetPopulationStatistics()] if name == "BLN" else []
        model.fit(
            x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks
        )  # trace + warm up
        models[name] = (model, callbacks)
    rates = {name: [] for name in models}
    for _ in range(repeats):
        for name, (model, callbacks) in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks)
            rates[name].append(samples / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed epochs per model (median is reported)"
    )
    parser.add_argument("--samples", type=int, default=4096, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    table = Table(
        title=f"Training throughput, batch size {args.batch_size}, median of {args.repeats} epochs"
    )
    table.add_column("model")
    table.add_column("normalization")
    table.add_column("samples/s", justify="right")
    table.add_column("vs BatchNormalization", justify="right")
    results = {}
    for label, architecture in (("CNN", cnn), ("GRU", rnn)):
        rates = measure(architecture, args.samples, args.batch_size, args.repeats)
        results[label] = rates
        for name, rate in rates.items():
            table.add_row(label, name, f"{rate:,.0f}", f"{rate / rates['BatchNormalization']:.2f}x")
    Console().print(table)
    ratio = results["CNN"]["BLN"] / results["CNN"]["BatchNormalization"]
    verdict = "meets" if ratio >= 0.8 else "misses"
    print(
        f"CNN: BLN runs at {ratio:.2f}x the BatchNormalization model's throughput ({verdict} "
        f"the 0.8x target)."
    )


if __name__ == "__main__":
    main()
