"""How long the paper's runs take on this machine, measured on scaled-down searches and extrapolated.

Run: python benchmarks/paper.py [--scales 0.05,0.1] [--scales-at-1 0.01,0.02] [--batch-sizes 25,1]
                               [--studies cifar10_cnn,imdb_lstm]

For each study and batch size, the real `build()` is searched (all 16
configurations, shared strategy, the three baselines, one seed, one epoch) on
random data of the real shapes at two sizes: `scale` times the paper's full
split (CIFAR-10: 45,000 training / 5,000 validation images; IMDB: 20,000 /
5,000 reviews), smaller ones at batch size 1 (`--scales-at-1`), after one
untimed warm-up search per study. A search's time is `fixed + scale * per_epoch` (building,
tracing, storage; then training and the 16 + 3 evaluations, which grow with
the data), so two sizes give both parts, and a paper run of `epochs` epochs,
`seeds` seeds and fraction `f` takes about `seeds * (fixed + epochs * f * per_epoch)`.

Only the time is meaningful here (the data are random). Early stopping
(`--patience`, 3 by default) can only make a real run shorter.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

import bln_search  # noqa: E402

FULL = {"cifar10_cnn": (45000, 5000), "imdb_lstm": (20000, 5000)}
EPOCHS = {"cifar10_cnn": 15, "imdb_lstm": 5}  # the paper's notebooks
SEEDS = 3


def random_data(study: str, train: int, validation: int):
    rng = np.random.default_rng(0)

    def part(n):
        if study == "cifar10_cnn":
            x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
            y = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
        else:
            x = rng.integers(1, 20000, (n, 80)).astype("int32")
            y = rng.integers(0, 2, (n, 1)).astype("float32")
        return x, y

    return bln_search.check_data((part(train), part(validation)))


def timed_search(study: str, scale: float, batch_size: int) -> float:
    import importlib

    module = importlib.import_module(f"studies.{study}")
    train, validation = (max(batch_size, round(n * scale)) for n in FULL[study])
    data = random_data(study, train, validation)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        bln_search.search(
            module.build,
            data,
            study_name="timing",
            storage=f"sqlite:///{folder}/timing.db",
            epochs=1,
            batch_size=batch_size,
            baselines=True,
        )
        return time.perf_counter() - start


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="0.05,0.1")
    parser.add_argument("--scales-at-1", default="0.01,0.02")
    parser.add_argument("--batch-sizes", default="25,1")
    parser.add_argument("--studies", default="cifar10_cnn,imdb_lstm")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        "| study | batch | scales | 1 epoch at each | fixed | per full epoch | 20 % run | full run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for study in args.studies.split(","):
        timed_search(study, 0.002, 25)  # warm-up: first traces and imports
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            scales = args.scales_at_1 if batch_size == 1 else args.scales
            low, high = (float(s) for s in scales.split(","))
            t_low = timed_search(study, low, batch_size)
            t_high = timed_search(study, high, batch_size)
            per_epoch = (t_high - t_low) / (high - low)
            fixed = max(0.0, t_low - low * per_epoch)
            runs = [SEEDS * (fixed + EPOCHS[study] * f * per_epoch) for f in (0.2, 1.0)]
            print(
                f"| {study} | {batch_size} | {low:g} / {high:g} | {t_low:.0f} s / {t_high:.0f} s "
                f"| {fixed:.0f} s "
                f"| {hours(per_epoch)} | {hours(runs[0])} | {hours(runs[1])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
