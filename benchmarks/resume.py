"""A shared search killed after epoch 8 of 10 and resumed, against the same search uninterrupted.

Run: python benchmarks/resume.py [--epochs 10 --kill-after 8 --signal TERM --batch-size 32]

Both are real `bln-search run` processes on the digits CNN (all 16 configurations,
no pruning, no patience), each in its own temporary folder and SQLite study, one
after the other in this run. The interrupted one is sent the signal once its
checkpoint of epoch `--kill-after` is stored, then the same command is run again;
its total is both processes' wall time. With checkpoints the re-run continues
from the last stored epoch instead of epoch 1. Target: resumed total <= 1.2x the
uninterrupted search. The last column checks that both give the same stored values.

With `--signal KILL` the re-run first waits for the killed trials' heartbeats to
lapse (2 x `--heartbeat` seconds), which is counted too.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bln_search.checkpoints import resume_epoch  # noqa: E402
from bln_search.errors import StorageError  # noqa: E402
from bln_search.storage import load_existing_study, open_existing_storage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "bln-search"
STUDY = "resume"


def wait_for_checkpoint(db: Path, epoch: int, victim: subprocess.Popen) -> None:
    """Returns once the run stored its checkpoint of `epoch`, read as `bln-search
    leaderboard` reads (nothing created or written), through one connection."""
    study = None
    while study is None or resume_epoch(study) < epoch:
        if victim.poll() is not None:
            sys.exit("the search ended before it could be stopped: raise --epochs")
        if study is None:
            try:
                study = load_existing_study(open_existing_storage(f"sqlite:///{db}"), STUDY)
            except StorageError:  # not created yet
                pass
        time.sleep(0.05)


def values(db: Path) -> dict:
    """{configuration: stored value} of the complete trials."""
    study = load_existing_study(open_existing_storage(f"sqlite:///{db}"), STUDY)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return {tuple(sorted(t.params.items())): t.value for t in complete}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--kill-after", type=int, default=8)
    parser.add_argument("--signal", choices=("TERM", "INT", "KILL"), default="TERM")
    parser.add_argument("--heartbeat", type=int, default=2)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="smaller: longer epochs, same process starts"
    )
    args = parser.parse_args()
    command = [
        str(BIN),
        "run",
        "--model",
        str(ROOT / "studies" / "digits_cnn.py") + ":build",
        "--epochs",
        str(args.epochs),
        "--pruner",
        "none",
        "--patience",
        "0",
        "--heartbeat",
        str(args.heartbeat),
        "--batch-sizes",
        str(args.batch_size),
        "-q",
        "--study",
        STUDY,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_DETERMINISTIC_OPS": "1"}
    env.pop("BLN_SEARCH_STORAGE", None)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    with tempfile.TemporaryDirectory() as whole, tempfile.TemporaryDirectory() as cut:
        start = time.perf_counter()
        subprocess.run(command, cwd=whole, check=True, **quiet)
        uninterrupted = time.perf_counter() - start

        start = time.perf_counter()
        victim = subprocess.Popen(command, cwd=cut, **quiet)
        wait_for_checkpoint(Path(cut) / "bln-search.db", args.kill_after, victim)
        victim.send_signal(getattr(signal, f"SIG{args.signal}"))
        victim.wait()
        first = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(command, cwd=cut, check=True, **quiet)
        second = time.perf_counter() - start
        same = values(Path(whole) / "bln-search.db") == values(Path(cut) / "bln-search.db")

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"digits CNN, batch size {args.batch_size}, {args.epochs} epochs, 16 configurations, "
        f"SIG{args.signal} "
        f"after epoch {args.kill_after}"
    )
    for column in ("search", "wall s", "/ uninterrupted", "same values"):
        table.add_column(column)
    table.add_row("uninterrupted", f"{uninterrupted:.1f}", "1.00x", "")
    table.add_row("run until the signal", f"{first:.1f}", f"{first / uninterrupted:.2f}x", "")
    table.add_row("re-run (resumes)", f"{second:.1f}", f"{second / uninterrupted:.2f}x", "")
    total = first + second
    table.add_row(
        "interrupted + resumed",
        f"{total:.1f}",
        f"{total / uninterrupted:.2f}x",
        "yes" if same else "NO",
    )
    Console().print(table)


if __name__ == "__main__":
    main()
