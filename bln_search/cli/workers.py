"""Local worker processes for `bln-search run --workers N`.

The process the user started is worker 1 (with the live display); it starts the
other N - 1 as quiet `bln-search worker` processes on the same study once its
own preflight check has passed and the study exists, so bad input fails once,
in the foreground. The settings travel as one JSON record and the storage URL
in the environment (`BLN_SEARCH_STORAGE`), never on a command line that `ps`
would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

STORAGE_ENV = "BLN_SEARCH_STORAGE"


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
