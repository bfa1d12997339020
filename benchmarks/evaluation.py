"""What makes the shared strategy's 16 evaluations per epoch cheap, and what does not.

Run: python benchmarks/evaluation.py

On a digits CNN trained one epoch, times 16 evaluations (one per configuration) of the
validation set three ways, round-robin, median of 7 rounds, as ratios to the first:

- arrays: `model.evaluate(x_val, y_val)`, re-adapting the arrays on every call (the naive way);
- cached dataset: one batched, cached `tf.data.Dataset` reused for every call (what the shared
  strategy does);
- cached prefix: the layers before the first BLN layer run once, the rest of the model is
  evaluated on their cached outputs (considered for the shared strategy, not adopted).

All three must give identical metrics; the script checks that.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import digits_cnn  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import bln_search  # noqa: E402

BATCH_SIZE = 32
ROUNDS = 7


def main():
    (x, y), (xv, yv) = digits_cnn.load_data()
    keras.utils.set_random_seed(0)
    model = digits_cnn.build()
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=1,
        verbose=0,
        callbacks=[bln_search.ResetPopulationStatistics()],
    )
    configs = bln_search.all_configurations()
    cached = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH_SIZE).cache()
    first_bln = next(
        i
        for i, layer in enumerate(model.layers)
        if isinstance(layer, bln_search.BatchLayerNormalization)
    )
    suffix = keras.Sequential(model.layers[first_bln:])
    suffix.compile_from_config(model.get_compile_config())

    def prefix_dataset():
        features = xv
        for layer in model.layers[:first_bln]:
            features = layer(features, training=False)
        return tf.data.Dataset.from_tensor_slices((features, yv)).batch(BATCH_SIZE).cache()

    ways = {
        "arrays (naive)": lambda: [evaluate(model, c, xv, yv) for c in configs],
        "cached dataset (shared strategy)": lambda: [evaluate(model, c, cached) for c in configs],
        "cached prefix + suffix model": lambda: (
            lambda d: [evaluate(suffix, c, d, config_model=model) for c in configs]
        )(prefix_dataset()),
    }
    results = {name: way() for name, way in ways.items()}  # warm-up: traces every function once
    reference = results["arrays (naive)"]
    for name, values in results.items():
        for got, want in zip(values, reference):
            assert all(abs(got[k] - want[k]) < 1e-5 for k in want), (
                f"{name} disagrees: {got} vs {want}"
            )
    times = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["arrays (naive)"])
    table = Table(
        title=(
            f"16 evaluations of 300 validation images, digits CNN, median of {ROUNDS} round-robin "
            f"rounds"
        )
    )
    table.add_column("way")
    table.add_column("time vs arrays", justify="right")
    for name, spent in times.items():
        table.add_row(name, f"{statistics.median(spent) / base:.2f}x")
    Console(width=120).print(table)
    print(
        f"first BLN layer is layer {first_bln} ({model.layers[first_bln - 1].name} before it);"
        f" all ways agree within 1e-5"
    )


def evaluate(model, config, x, y=None, config_model=None):
    bln_search.configure(config_model or model, config)
    if y is None:
        return model.evaluate(x, verbose=0, return_dict=True)
    return model.evaluate(x, y, batch_size=BATCH_SIZE, verbose=0, return_dict=True)


if __name__ == "__main__":
    main()
