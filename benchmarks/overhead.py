"""Per-trial overhead of the search: everything a trial costs beyond `model.fit` (`--strategy per-trial`).

Run: python benchmarks/overhead.py [--epochs 3]

Runs the grid (16 trials, no pruning) on the digits CNN in a temporary SQLite
study and splits the wall time into the time spent inside `model.fit` and the
rest (preflight, model build, storage writes, callbacks, study bookkeeping),
both measured in the same run.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = bln_search.check_data(digits_cnn.load_data())
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{folder}/overhead.db"
        start = time.perf_counter()
        study = bln_search.search(
            digits_cnn.build,
            data,
            study_name="overhead",
            storage=storage,
            epochs=args.epochs,
            strategy="per-trial",
        )
        wall = time.perf_counter() - start
    fit = sum(t.user_attrs["fit_seconds"] for t in study.trials)
    in_trials = sum(t.duration.total_seconds() for t in study.trials)
    table = Table(title=f"Digits CNN grid search, 16 trials x {args.epochs} epochs, SQLite")
    table.add_column("part")
    table.add_column("share of wall time", justify="right")
    table.add_row("inside model.fit", f"{fit / wall:.1%}")
    table.add_row(
        "trial overhead (build, configure, callbacks, storage)", f"{(in_trials - fit) / wall:.1%}"
    )
    table.add_row(
        "between trials (preflight, queue, study bookkeeping)", f"{(wall - in_trials) / wall:.1%}"
    )
    table.add_row("[bold]total overhead[/]", f"[bold]{(wall - fit) / wall:.1%}[/]")
    Console().print(table)
    print(f"overhead / fit time = {(wall - fit) / fit:.1%} (target <= 10%)")


if __name__ == "__main__":
    main()
