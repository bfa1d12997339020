"""Training throughput of BLN vs Keras BatchNormalization and LayerNormalization, per backend.

Run: python benchmarks/layer.py [--backends tensorflow,jax,torch] [--models cnn,gru]
                                [--repeats 5] [--samples 4096]

The same small CNN (and GRU) is built three times, differing only in the
normalization layer. Each Keras backend runs in its own subprocess (the backend is
fixed per process); inside it the models are timed round-robin (A B C A B C ...),
so machine noise hits all three alike. The table reports the median throughput of
each and its ratio to the BatchNormalization model on the same backend; backends
whose package is not installed are listed as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BACKENDS = ("tensorflow", "jax", "torch")
TARGET = 0.9  # BLN's throughput against BatchNormalization's, on every backend


def normalizations():
    import keras

    from bln_search import BatchLayerNormalization

    return {
        "BLN": lambda: BatchLayerNormalization(),
        "BatchNormalization": lambda: keras.layers.BatchNormalization(),
        "LayerNormalization": lambda: keras.layers.LayerNormalization(),
    }


def cnn(norm):
    import keras

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
    import keras

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
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")
    reps = -(-samples // len(x))
    x = np.concatenate([x] * reps)[:samples]
    y = np.concatenate([digits.target] * reps)[:samples].astype("int32")
    return (x if sequence else x[..., None]), y


def measure(architecture, samples, batch_size, repeats):
    import keras

    from bln_search import ResetPopulationStatistics

    x, y = data(samples, sequence=architecture is rnn)
    models = {}
    for name, norm in normalizations().items():
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


ARCHITECTURES = {"cnn": ("CNN", cnn), "gru": ("GRU", rnn)}


def worker(args):
    """In a subprocess with KERAS_BACKEND set: one JSON line of {model: {norm: rate}}."""
    results = {}
    for key in args.models.split(","):
        label, architecture = ARCHITECTURES[key]
        results[label] = measure(architecture, args.samples, args.batch_size, args.repeats)
    print(json.dumps(results))


def run_backend(backend, args):
    """Runs this script as a worker under `backend`; its results, or why there are none."""
    package = "tensorflow" if backend == "tensorflow" else backend
    if importlib.util.find_spec(package) is None:
        return None, f"{package} not installed (pip install -e '.[{backend}]')"
    command = [sys.executable, __file__, "--worker", "--models", args.models]
    command += ["--samples", str(args.samples), "--batch-size", str(args.batch_size)]
    command += ["--repeats", str(args.repeats)]
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed epochs per model (median is reported)"
    )
    parser.add_argument("--samples", type=int, default=4096, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="Keras backends, one subprocess each"
    )
    parser.add_argument("--models", default="cnn", help="cnn, gru or cnn,gru")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Training throughput, batch size {args.batch_size}, median of {args.repeats} epochs"
    )
    for column in ("backend", "model", "normalization", "samples/s", "vs BatchNormalization"):
        table.add_column(column, justify="right" if column[0] in "sv" else "left")
    verdicts = []
    for backend in args.backends.split(","):
        started = time.perf_counter()
        results, problem = run_backend(backend, args)
        if problem:
            table.add_row(backend, "-", "-", "skipped", problem)
            continue
        for label, rates in results.items():
            for name, rate in rates.items():
                ratio = rate / rates["BatchNormalization"]
                table.add_row(backend, label, name, f"{rate:,.0f}", f"{ratio:.2f}x")
            ratio = rates["BLN"] / rates["BatchNormalization"]
            verdict = "meets" if ratio >= TARGET else "misses"
            verdicts.append(
                f"{backend} {label}: BLN runs at {ratio:.2f}x BatchNormalization's throughput "
                f"({verdict} the {TARGET}x target; {time.perf_counter() - started:.0f} s)."
            )
        table.add_section()
    Console().print(table)
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
