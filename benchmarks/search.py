"""Shared training vs one training per trial, on the digits CNN grid (16 configurations).

Run: python benchmarks/search.py [--epochs 5] [--small-batches 1,4,25]

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

A second table, per training batch size (`--small-batches`, on 400 training /
200 validation digits, 2 epochs, no pruning): the shared search against the
same training alone (build + fit, no evaluation), and against evaluating batch
by batch at the training batch size (`evaluation_batch_size=batch_size`, what
every search did before grouped inference). Targets: search <= 2.0x the
training alone at batch size 1, <= 1.3x at 25. The floor column is the training
plus the 16 grouped evaluations per epoch in plain Keras, no storage: what no
search that evaluates every configuration can go below, written as a user would.
The search creates the optimizer's and metrics' variables before `fit`
(`bln_search.loading.create_state`), so TensorFlow traces its training step once
where a plain `fit` traces it twice; "training traced once" is the training alone
done that way, to show how much of the ratio that accounts for.
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
from bln_search.trials import config_of  # noqa: E402

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


SMALL_TRAIN, SMALL_VALIDATION, SMALL_EPOCHS = 400, 200, 2  # --train-samples etc. change them


def small_data():
    (x, y), (xv, yv) = digits_cnn.load_data()
    return (x[:SMALL_TRAIN], y[:SMALL_TRAIN]), (xv[:SMALL_VALIDATION], yv[:SMALL_VALIDATION])


def timed_training_alone(batch_size: int, traced_once: bool = False) -> float:
    """Build + plain `fit`. `traced_once`: the optimizer's and metrics' variables created
    first, as the search does, so TensorFlow traces the training step once, not twice."""
    import keras

    from bln_search.loading import create_state

    data = bln_search.check_data(small_data())
    (x, y) = data.train
    start = time.perf_counter()
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    model = digits_cnn.build()
    if traced_once:
        create_state(model, data)
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=SMALL_EPOCHS,
        verbose=0,
        callbacks=[bln_search.ResetPopulationStatistics()],
    )
    return time.perf_counter() - start


def timed_small_floor(batch_size: int) -> float:
    """Training alone plus the evaluations no search can skip: 16 grouped evaluates per epoch.

    Plain Keras, as a user would write it with grouped inference: the same
    large evaluation batches the search picks, on one cached dataset, no
    storage. Its ratio to the training alone is the least any search that
    evaluates every configuration after every epoch can reach.
    """
    import keras

    from bln_search.evaluation import evaluation_batch_size

    data = bln_search.check_data(small_data())  # outside the timing, as for the search
    (x, y), (xv, _) = data.train, data.validation
    configs = bln_search.all_configurations()
    start = time.perf_counter()
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    model = digits_cnn.build()
    physical = evaluation_batch_size(model, batch_size, len(xv))
    validation = data.validation_dataset(physical)

    class SixteenEvaluations(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for config in configs:
                bln_search.configure(self.model, config)
                with bln_search.grouped_inference(self.model, batch_size):
                    self.model.evaluate(validation, verbose=0)

    callbacks = [bln_search.ResetPopulationStatistics(), SixteenEvaluations()]
    model.fit(x, y, batch_size=batch_size, epochs=SMALL_EPOCHS, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def timed_small_search(folder: str, name: str, batch_size: int, evaluation_batch_size):
    data = bln_search.check_data(small_data())
    start = time.perf_counter()
    study = bln_search.search(
        digits_cnn.build,
        data,
        study_name=name,
        storage=f"sqlite:///{folder}/{name}.db",
        epochs=SMALL_EPOCHS,
        batch_size=batch_size,
        strategy="shared",
        pruner=None,
        evaluation_batch_size=evaluation_batch_size,
    )
    return time.perf_counter() - start, study


def small_batches_table(batch_sizes: list[int], repeats: int = 1) -> Table:
    """Each time is the fastest of `repeats` runs, the five measurements of a batch size taking
    turns: on a shared machine, interference only ever adds time."""
    runs = "one run" if repeats == 1 else f"fastest of {repeats} interleaved runs"
    table = Table(
        title=(
            f"Shared search at small batch sizes: digits CNN, {SMALL_TRAIN} training / "
            f"{SMALL_VALIDATION} validation, {SMALL_EPOCHS} epochs, 16 configurations, {runs}"
        )
    )
    for column in (
        "batch size",
        "search / training alone",
        "search / training traced once",
        "floor / training alone",
        "search / floor",
        "batch-by-batch / training alone",
        "batch-by-batch / search",
        "same values",
        "top-1",
    ):
        table.add_column(column, justify="left" if column == "top-1" else "right")
    with tempfile.TemporaryDirectory() as folder:
        for b in batch_sizes:
            times: dict[str, list[float]] = {}
            for run in range(repeats):
                times.setdefault("alone", []).append(timed_training_alone(b))
                times.setdefault("once", []).append(timed_training_alone(b, traced_once=True))
                times.setdefault("floor", []).append(timed_small_floor(b))
                seconds, grouped_study = timed_small_search(folder, f"grouped-{b}-{run}", b, None)
                times.setdefault("grouped", []).append(seconds)
                seconds, one_study = timed_small_search(folder, f"one-{b}-{run}", b, b)
                times.setdefault("one", []).append(seconds)
            alone, once, floor, grouped, one_by_one = (
                min(times[name]) for name in ("alone", "once", "floor", "grouped", "one")
            )
            same = all(
                abs(g.value - o.value) <= 1e-5 * max(1.0, abs(o.value))
                for g, o in zip(
                    sorted(grouped_study.trials, key=lambda t: config_of(t).label),
                    sorted(one_study.trials, key=lambda t: config_of(t).label),
                )
            )
            table.add_row(
                str(b),
                f"{grouped / alone:.2f}x",
                f"{grouped / once:.2f}x",
                f"{floor / alone:.2f}x",
                f"{grouped / floor:.2f}x",
                f"{one_by_one / alone:.2f}x",
                f"{one_by_one / grouped:.2f}x",
                "yes" if same else "NO",
                top1(grouped_study) if top1(grouped_study) == top1(one_study) else "DIFFER",
            )
    return table


def top1(study: optuna.Study) -> str:
    return config_of(study.best_trial).label


def main():
    global SMALL_TRAIN, SMALL_VALIDATION, SMALL_EPOCHS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--small-batches",
        default="1,4,25",
        help="training batch sizes of the grouped-evaluation table ('' to skip)",
    )
    parser.add_argument("--skip-strategies", action="store_true", help="only the second table")
    parser.add_argument("--train-samples", type=int, default=SMALL_TRAIN, help="second table")
    parser.add_argument("--validation-samples", type=int, default=SMALL_VALIDATION)
    parser.add_argument("--small-epochs", type=int, default=SMALL_EPOCHS)
    parser.add_argument(
        "--repeats", type=int, default=1, help="second table: the fastest of this many runs"
    )
    args = parser.parse_args()
    SMALL_TRAIN, SMALL_VALIDATION = args.train_samples, args.validation_samples
    SMALL_EPOCHS = args.small_epochs
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    epochs = args.epochs
    timed_limit(1)  # warm up TensorFlow once, so no row pays for first-use costs
    if args.small_batches:
        Console(width=140).print(
            small_batches_table([int(b) for b in args.small_batches.split(",")], args.repeats)
        )
    if args.skip_strategies:
        return
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
