"""Shared training vs one training per trial, on the digits CNN grid (16 configurations).

Run: python benchmarks/search.py [--epochs 5]

Everything is measured side by side in one process, on the same data, each in
a fresh temporary SQLite study:

- shared: `--strategy shared`, no pruning (one training, 16 evaluations per epoch);
- per-trial: `--strategy per-trial`, no pruning (16 trainings);
- per-trial + median: the CLI's default median pruner, to show what pruning saves there;
- shared + median: the same pruner with the shared strategy;
- limit: what shared cannot beat without skipping work: building the model,
  one plain `model.fit` of the same epochs, and 16 plain `model.evaluate`
  calls on the validation arrays after every epoch.

Op determinism is enabled, so the two strategies see identical numbers and
their top-1 configurations must agree.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import digits_cnn  # noqa: E402
import optuna  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import bln_search  # noqa: E402
from bln_search.pruning import make_pruner  # noqa: E402

BATCH_SIZE = 32


def timed_search(
    folder: str, name: str, epochs: int, strategy: str, pruner
) -> tuple[float, optuna.Study]:
    data = bln_search.check_data(digits_cnn.load_data())
    start = time.perf_counter()
    study = bln_search.search(
        digits_cnn.build,
        data,
        study_name=name,
        storage=f"sqlite:///{folder}/{name}.db",
        epochs=epochs,
        batch_size=BATCH_SIZE,
        strategy=strategy,
        pruner=pruner,
    )
    return time.perf_counter() - start, study


def timed_limit(epochs: int) -> float:
    """Build + one plain fit + 16 plain evaluates per epoch, as a user would write it."""
    import keras

    (x, y), (xv, yv) = digits_cnn.load_data()
    configs = bln_search.all_configurations()

    class SixteenEvaluations(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for config in configs:
                bln_search.configure(self.model, config)
                self.model.evaluate(xv, yv, batch_size=BATCH_SIZE, verbose=0)

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = digits_cnn.build()
    callbacks = [bln_search.ResetPopulationStatistics(), SixteenEvaluations()]
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def top1(study: optuna.Study) -> str:
    return bln_search.trials.config_of(study.best_trial).label


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    epochs = args.epochs
    timed_limit(1)  # warm up TensorFlow once, so no row pays for first-use costs
    with tempfile.TemporaryDirectory() as folder:
        limit = timed_limit(epochs)
        shared, shared_study = timed_search(folder, "shared", epochs, "shared", None)
        per_trial, per_trial_study = timed_search(folder, "per-trial", epochs, "per-trial", None)
        per_trial_median, median_study = timed_search(
            folder, "per-trial-median", epochs, "per-trial", make_pruner("median", epochs)
        )
        shared_median, shared_median_study = timed_search(
            folder, "shared-median", epochs, "shared", make_pruner("median", epochs)
        )

    def pruned(study):
        return sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)

    table = Table(title=f"Digits CNN, 16 configurations x {epochs} epochs, SQLite, one run")
    for column in (
        "search",
        "trainings",
        "pruned",
        "wall s",
        "per-trial / this",
        "this / limit",
        "top-1",
    ):
        table.add_column(column, justify="left" if column in ("search", "top-1") else "right")
    rows = [
        ("shared", shared, 1, shared_study),
        ("per-trial", per_trial, 16, per_trial_study),
        ("per-trial + median pruner", per_trial_median, 16, median_study),
        ("shared + median pruner", shared_median, 1, shared_median_study),
    ]
    for name, wall, trainings, study in rows:
        table.add_row(
            name,
            str(trainings),
            str(pruned(study)),
            f"{wall:.1f}",
            f"{per_trial / wall:.2f}x",
            f"{wall / limit:.2f}x",
            top1(study),
        )
    table.add_row(
        "limit: build + fit + 16 evaluate/epoch",
        "1",
        "–",
        f"{limit:.1f}",
        f"{per_trial / limit:.2f}x",
        "1.00x",
        "–",
    )
    Console(width=140).print(table)
    same = top1(shared_study) == top1(per_trial_study)
    print(
        f"shared is {per_trial / shared:.2f}x faster than per-trial (target >= 6x); "
        f"shared / limit = {shared / limit:.2f} (target <= 1.25); "
        f"same top-1: {'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
