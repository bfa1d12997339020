"""Shared training with the racing pruner and patience vs without, on the digits CNN.

Run: python benchmarks/racing.py [--epochs 20]

Both searches run side by side in one process, on the same data, each in a
fresh temporary SQLite study, with op determinism on: the plain shared search
trains every epoch and evaluates all 16 configurations after each; the raced
one halves the live configurations every 2 epochs after the first 2 and stops
once none improved for `--patience` epochs. Target: >= 2x faster, same top-1.

Two more rows say what the target can reach: the same training alone (build +
fit, no evaluation), the floor no pruning of evaluations can go below; and, for
the raced winner, its value in the plain search against the plain winner's (a
gap of a few 1e-4 is a tie between configurations, not a different answer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

import digits_cnn  # noqa: E402
import optuna  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import bln_search  # noqa: E402
from bln_search.trials import ATTR_EPOCHS_TRAINED, config_of  # noqa: E402


def timed(folder: str, name: str, epochs: int, pruner: str, patience: int | None):
    data = bln_search.check_data(digits_cnn.load_data())
    start = time.perf_counter()
    study = bln_search.search(
        digits_cnn.build,
        data,
        study_name=name,
        storage=f"sqlite:///{folder}/{name}.db",
        epochs=epochs,
        strategy="shared",
        pruner=pruner,
        patience=patience,
    )
    return time.perf_counter() - start, study


def timed_training_alone(epochs: int) -> float:
    import keras

    (x, y), _ = digits_cnn.load_data()
    start = time.perf_counter()
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    model = digits_cnn.build()
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        callbacks=[bln_search.ResetPopulationStatistics()],
    )
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=3)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        timed(folder, "warm-up", 1, "none", None)  # first-use costs paid by no row
        plain, plain_study = timed(folder, "plain", args.epochs, "none", None)
        raced, raced_study = timed(folder, "raced", args.epochs, "racing", args.patience)
        alone = timed_training_alone(args.epochs)

    table = Table(title=f"Digits CNN, shared training, up to {args.epochs} epochs, one run")
    for column in ("search", "epochs trained", "pruned", "evaluations", "plain / this", "top-1"):
        table.add_column(column, justify="left" if column in ("search", "top-1") else "right")
    for name, wall, study in (
        ("shared, no pruning", plain, plain_study),
        (f"shared + racing + patience {args.patience}", raced, raced_study),
    ):
        trials = study.trials
        table.add_row(
            name,
            str(max(t.user_attrs.get(ATTR_EPOCHS_TRAINED, 0) for t in trials)),
            str(sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)),
            str(sum(t.user_attrs.get(ATTR_EPOCHS_TRAINED, 0) for t in trials)),
            f"{plain / wall:.2f}x",
            config_of(study.best_trial).label,
        )
    table.add_row(
        "training alone (no evaluation)", str(args.epochs), "–", "0", f"{plain / alone:.2f}x", "–"
    )
    Console(width=140).print(table)
    same = config_of(plain_study.best_trial) == config_of(raced_study.best_trial)
    raced_winner = config_of(raced_study.best_trial)
    in_plain = next(t.value for t in plain_study.trials if config_of(t) == raced_winner)
    print(
        f"racing + patience is {plain / raced:.2f}x faster (target >= 2x); "
        f"same top-1: {'yes' if same else 'NO'}; the raced winner scored {in_plain:.4f} in the "
        f"plain search, whose winner scored {plain_study.best_value:.4f}; evaluations are "
        f"{1 - alone / plain:.0%} of the plain search's time"
    )


if __name__ == "__main__":
    main()
