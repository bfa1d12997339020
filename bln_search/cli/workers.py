"""Local worker processes for `bln-search run --workers N`.

The process the user started is worker 1 (with the live display); it starts the
other N - 1 as quiet `bln-search worker` processes on the same study once its
own preflight check has passed and the study exists, so bad input fails once,
in the foreground. The settings travel as one JSON record and the storage URL
in the environment (`BLN_SEARCH_STORAGE`), never on a command line that `ps`
would show.

Workers stop with the process that started them, however it stops: on Ctrl-C,
SIGTERM, SIGHUP or an error it interrupts them and waits; if it is killed
outright, the kernel sends each worker SIGTERM (Linux: `PR_SET_PDEATHSIG`;
elsewhere a thread watches the parent's pid), which they handle as Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

STORAGE_ENV = "BLN_SEARCH_STORAGE"
PARENT_ENV = "BLN_SEARCH_PARENT_PID"


@dataclass
class WorkerExit:
    number: int
    returncode: int
    last_line: str


class WorkerPool:
    """Background `bln-search run` processes that share the foreground worker's study."""

    def __init__(self, environment: dict[str, str], storage_url: str, count: int):
        self.environment = environment
        self.storage_url = storage_url
        self.count = count
        self.processes: list[tuple[subprocess.Popen, object]] = []

    def start(self) -> None:
        env = {
            **os.environ,
            **self.environment,
            STORAGE_ENV: self.storage_url,
            PARENT_ENV: str(os.getpid()),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        for _ in range(self.count):
            log = tempfile.TemporaryFile(mode="w+")
            # -P: the working directory is not put first on sys.path, where it could replace a library.
            command = [sys.executable, "-P", "-m", "bln_search.cli", "worker"]
            # Own process group: a terminal's Ctrl-C reaches the foreground worker, which stops these.
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True
            )
            self.processes.append((process, log))

    def interrupt(self) -> None:
        """Ctrl-C for every worker: each records its running trials as interrupted and exits 130."""
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> list[WorkerExit]:
        exits = []
        for number, (process, log) in enumerate(self.processes, start=2):
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.seek(0)
            lines = [line.strip() for line in log.read().splitlines() if line.strip()]
            log.close()
            exits.append(WorkerExit(number, process.returncode, lines[-1] if lines else ""))
        return exits


class StartWorkers:
    """An observer wrapper that starts the pool once the study exists and the preflight check passed."""

    def __init__(self, observer, pool: WorkerPool):
        self.observer, self.pool = observer, pool

    def __getattr__(self, name):
        return getattr(self.observer, name)

    def on_search_start(self, study, planned):
        self.pool.start()
        self.observer.on_search_start(study, planned)


def stop_workers(pool: WorkerPool | None, stop: bool) -> list[WorkerExit]:
    """Waits for the background workers; on an interrupt or error, Ctrl-C's them first."""
    if pool is None or not pool.processes:
        return []
    if stop:
        pool.interrupt()
        return pool.wait(timeout=120)
    return pool.wait()


def die_with_parent() -> None:
    """In a worker: receive SIGTERM when the process that started it ends, however it ends."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(
            target=_watch_parent, args=(parent,), name="bln-search-parent", daemon=True
        ).start()
    if os.getppid() != parent:  # it ended before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(signum: int) -> bool:
    """Linux's `prctl(PR_SET_PDEATHSIG, signum)`: the kernel signals us when our parent exits."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(1, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
