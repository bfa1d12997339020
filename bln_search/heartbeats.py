"""Heartbeats of running trials, so a killed worker's trials are found and retried.

`Study.optimize` records heartbeats itself; the ask-and-tell trials of a
shared training record them here, through the storage's public API.
"""

from __future__ import annotations

import threading
import time


def fail_stale_trials(study) -> None:
    """Optuna's `fail_stale_trials`, whose writes and retries a signal cannot separate.

    It fails each stale trial, then queues its retry; a signal raised between the
    two (each storage call finishes first, `atomic_storage`) left a dead worker's
    trial failed and never retried.
    """
    import optuna

    from bln_search.interrupts import atomic

    with atomic():
        optuna.storages.fail_stale_trials(study)


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats if the storage records them (RDB storages opened by bln-search do)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def _trial_id(trial) -> int:
    """The storage's id of a trial: the public heartbeat API (`storage.record_heartbeat`) takes
    this id, and a trial exposes it nowhere else (`Study.optimize` reads the same attribute for
    its own heartbeat thread)."""
    return trial._trial_id


class OrphanWatch:
    """Gives a heartbeat, once, to every running trial a waiting worker has not seen before.

    A worker killed between Optuna's ask and its first heartbeat leaves a running
    trial with no heartbeat at all, which Optuna never finds stale (it only compares
    recorded heartbeats): a re-run waiting for it waited forever. One beat from here
    makes it lapse one grace period later like any dead worker's trial; a live
    owner's own beats go on, and a trial already beating lapses at most one grace
    period late, once.
    """

    def __init__(self, storage):
        self.storage = storage
        self.seen: set[int] = set()

    def __call__(self, study) -> None:
        if not heartbeat_interval(self.storage):
            return
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _trial_id(trial) not in self.seen:
                self.seen.add(_trial_id(trial))
                # Optuna records a heartbeat whatever the trial's state: one that finished
                # meanwhile only gets a row nobody reads.
                self.storage.record_heartbeat(_trial_id(trial))


class TrialHeartbeats:
    """Records a heartbeat for every live trial of a shared training, through the storage's public API.

    `Study.optimize` runs one heartbeat thread per trial; the ask-and-tell
    trials of a shared training need this instead, so that a killed worker's
    trials become stale and are retried like any other. `live()` returns the
    trials still running (a pruned or failed one needs no more beats).
    """

    def __init__(self, storage, trials, live=None, beaten_at: float | None = None):
        self.interval = heartbeat_interval(storage)
        self.storage = storage
        self.live = live or (lambda: trials)
        # `time.monotonic()` when every trial last had a heartbeat (`beat_once` as it was asked
        # for): the first beat is due one interval after, not at once.
        self.beaten_at = beaten_at
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="bln-search-heartbeat", daemon=True)

    @staticmethod
    def beat_once(storage, trial) -> None:
        """A first heartbeat at once, so a worker killed before training still leaves a stale trial."""
        if heartbeat_interval(storage):
            storage.record_heartbeat(_trial_id(trial))

    def _beat(self) -> None:
        if self.beaten_at is not None:
            due = self.beaten_at + self.interval - time.monotonic()
            if self.stop.wait(max(0.0, due)):
                return
        while True:
            for trial in list(self.live()):
                self.storage.record_heartbeat(_trial_id(trial))
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.interval:
            self.stop.set()
            self.thread.join()
