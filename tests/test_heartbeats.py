"""Heartbeats of a shared training's trials: none missed, none written twice in a row."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from bln_search.heartbeats import TrialHeartbeats


class Storage:
    """Records heartbeats, as an RDB storage opened with `heartbeat_seconds=30` would."""

    def __init__(self):
        self.beats, self.beaten = [], threading.Event()

    def get_heartbeat_interval(self):
        return 30

    def record_heartbeat(self, trial_id):
        self.beats.append(trial_id)
        self.beaten.set()


TRIALS = [SimpleNamespace(_trial_id=i) for i in (3, 4)]


def test_trials_beaten_as_they_were_asked_for_get_their_next_beat_an_interval_later():
    storage = Storage()
    with TrialHeartbeats(storage, TRIALS, beaten_at=time.monotonic()):
        assert not storage.beaten.wait(0.3)
    assert storage.beats == []


def test_trials_beaten_an_interval_ago_or_never_are_beaten_at_once():
    for beaten_at in (time.monotonic() - 30, None):
        storage = Storage()
        with TrialHeartbeats(storage, TRIALS, beaten_at=beaten_at):
            assert storage.beaten.wait(10)
        assert storage.beats[:2] == [3, 4]
