"""Signals and kills: SIGTERM and SIGHUP stop a run as Ctrl-C does, workers die with their parent,
and a signal during the final writes of a training waits for them. Real processes, real SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest

import bln_search
from bln_search import SearchInterrupted, SearchObserver, interrupts
from bln_search.trials import config_of
from tests.fixtures import models

FIX = str(Path(models.__file__).resolve())
BIN = Path(sys.executable).parent
COMPLETE = optuna.trial.TrialState.COMPLETE
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL
# A model that pauses in every batch: a run is long enough to signal, and its re-run (which
# must repeat the epochs: a study refuses others) is still short.
STUDY = "models-build_slow"

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)"
)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return (
        fields is not None and fields[0] != "Z"
    )  # a zombie has exited; only its parent can reap it


def start_run(
    cwd: Path, *args: str, model: str = "build_slow", pause: str = "0.05", meet: int = 0
) -> subprocess.Popen:
    """`pause`: seconds per batch of build_slow; a re-run needs none. `meet`: so many processes
    start training together (tests/fixtures/models.py)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "BLN_TEST_PAUSE": pause}
    if meet:
        (cwd / "meet").mkdir()
        env["BLN_TEST_MEET"] = f"{cwd / 'meet'}:{meet}"
    env.pop("BLN_SEARCH_STORAGE", None)
    command = [str(BIN / "bln-search"), "run", "--model", f"{FIX}:{model}", "-q", *args]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def load(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{cwd / 'bln-search.db'}")


def wait_until(cwd: Path, process: subprocess.Popen, condition, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        assert process.poll() is None, process.communicate()[1]
        if (cwd / "bln-search.db").exists():
            try:
                trials = load(cwd).trials
            except Exception:  # the study is still being created
                continue
            if condition(trials):
                return trials
    process.kill()
    raise AssertionError("timed out waiting for the run to reach the moment to signal")


def training(trials) -> bool:
    return any(t.state == RUNNING and t.intermediate_values for t in trials)


def finished(study) -> dict:
    return {
        t.number: (t.value, t.params, t.user_attrs.get("history"))
        for t in study.trials
        if t.state == COMPLETE
    }


CASES = {
    # signal, strategy options, how many trials must have finished when it arrives. Per-trial
    # runs stop through the same handler: tests/test_cli.py sends them SIGINT mid-trial.
    "sigterm-shared": (
        signal.SIGTERM,
        ["--strategy", "shared", "--epochs", "4", "--configs-per-training", "8"],
        8,
    ),
    "sighup-shared": (signal.SIGHUP, ["--strategy", "shared", "--epochs", "40"], 0),
}


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("case", CASES)
def test_a_signal_mid_epoch_stops_like_ctrl_c_and_a_rerun_completes(tmp_path, case):
    signum, args, done = CASES[case]
    process = start_run(tmp_path, *args, "--pruner", "none")
    wait_until(
        tmp_path,
        process,
        lambda trials: sum(t.state == COMPLETE for t in trials) >= done and training(trials),
    )
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert "rank" in err  # the partial leaderboard
    study = load(tmp_path)
    assert not study.get_trials(states=(RUNNING,))
    stopped = study.get_trials(states=(FAIL,))
    assert stopped and {t.user_attrs.get("fail_reason") for t in stopped} == {"interrupted"}
    before = finished(study)
    assert len(before) >= done
    if signum == signal.SIGHUP:
        return  # the same path as SIGTERM from here on
    rerun = start_run(tmp_path, *args, "--pruner", "none", pause="0")
    assert rerun.wait(timeout=300) == 0, rerun.communicate()[1]
    study = load(tmp_path)
    complete = study.get_trials(states=(COMPLETE,))
    assert len({config_of(t) for t in complete}) == len(complete) == 16
    assert {n: v for n, v in finished(study).items() if n in before} == before


def _both_workers_training(trials) -> bool:
    """Each of the two workers has a running trial past its first epoch."""
    workers = {
        t.user_attrs.get("worker") for t in trials if t.state == RUNNING and t.intermediate_values
    }
    return len(workers - {None}) == 2


@pytest.mark.slow
@needs_proc
def test_sigterm_stops_every_worker_and_a_rerun_completes(tmp_path):
    # The two workers start training together (under load one started so late that the other
    # had finished all 8 epochs: nothing was left to stop).
    args = ["--workers", "2", "--epochs", "6", "--pruner", "none"]
    process = start_run(tmp_path, *args, meet=2)
    wait_until(tmp_path, process, _both_workers_training)
    workers = children_of(process.pid)
    assert workers
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err and "rank" in err
    assert not [pid for pid in workers if alive(pid)]
    study = load(tmp_path)
    assert not study.get_trials(states=(RUNNING,))
    assert len({t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}) == 2
    rerun = start_run(tmp_path, *args, pause="0")
    assert rerun.wait(timeout=300) == 0, rerun.communicate()[1]
    complete = load(tmp_path).get_trials(states=(COMPLETE,))
    assert len({config_of(t) for t in complete}) == len(complete) == 16


@pytest.mark.slow
@needs_proc
def test_workers_die_with_a_killed_parent_and_leave_nothing_running(tmp_path):
    process = start_run(
        tmp_path,
        "--workers",
        "2",
        "--epochs",
        "400",
        "--pruner",
        "none",
        "--study",
        STUDY,
        model="build",  # no re-run here, so the fast model with many epochs
    )
    wait_until(tmp_path, process, _both_workers_training)
    workers = children_of(process.pid)
    assert workers
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its killed parent"
    # Each worker stopped as on Ctrl-C: only the killed parent's own trials are still RUNNING.
    running = load(tmp_path).get_trials(states=(RUNNING,))
    assert all(t.user_attrs.get("worker", "").endswith(f":{process.pid}") for t in running)


# A signal while a training's results are stored: the writes finish, then the search stops.


class SignalAt(SearchObserver):
    """Sends `signum` to this process from inside the search, at one chosen moment."""

    def __init__(self, signum: int, moment: str):
        self.signum, self.moment, self.sent = signum, moment, False
        self.trained: set[int] = set()  # trials whose last epoch was reported

    def _send(self):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_epoch_end(self, number, epoch, epochs, value):
        if epoch == epochs:
            self.trained.add(number)
            if self.moment == "last epoch" and number >= 3:
                self._send()

    def on_trial_end(self, trial):
        if self.moment == "trial end":
            self._send()


@pytest.fixture
def cli_signal_handling():
    """The CLI's signal handlers, as `bln-search run` installs them; pytest's own afterwards."""
    restore = interrupts.install()
    yield
    restore()


@pytest.fixture
def python_s_own_handler():
    """Ctrl-C as a script or notebook has it: Python's default handler, nothing of ours."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.parametrize("handler", ["cli_signal_handling", "python_s_own_handler"])
@pytest.mark.parametrize(
    "strategy, moment",
    [("per-trial", "last epoch"), ("shared", "last epoch"), ("shared", "trial end")],
)
def test_a_signal_during_the_final_writes_lets_them_finish(
    data, storage, handler, request, strategy, moment
):
    """Through the CLI's handlers, and through the Python API under Python's own handler
    (before, its KeyboardInterrupt cut the writes: a finished training stored interrupted)."""
    request.getfixturevalue(handler)
    observer = SignalAt(signal.SIGINT, moment)
    with pytest.raises(SearchInterrupted):
        bln_search.search(
            models.build,
            data,
            study_name="writes",
            storage=storage,
            epochs=2,
            strategy=strategy,
            pruner=None,
            observer=observer,
        )
    study = optuna.load_study(study_name="writes", storage=storage)
    assert observer.sent and observer.trained
    assert not study.get_trials(states=(RUNNING,))
    complete = {t.number for t in study.trials if t.state == COMPLETE}
    assert observer.trained <= complete  # finished training is never stored as interrupted
    if handler == "python_s_own_handler":
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_signal_inside_a_finalizer_prints_no_traceback_and_is_raised_again(monkeypatch):
    """Python cannot raise from a `__del__`: it hands the exception to `sys.unraisablehook`,
    whose default prints "Exception ignored ... Traceback". Ours stays silent; `check` raises."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    restore = interrupts.install()
    try:

        class FreedDuringASignal:
            def __del__(self):
                interrupts._handler(signal.SIGINT, None)  # as if Ctrl-C arrived right here

        FreedDuringASignal()
        with pytest.raises(interrupts.Interrupted):
            interrupts.check()
        other = RuntimeError("not ours")

        class FreedWithAnotherError:
            def __del__(self):
                raise other

        FreedWithAnotherError()
    finally:
        restore()
    assert [report.exc_value for report in seen] == [other]  # only the foreign one reported
    assert sys.unraisablehook == seen.append


# A signal inside a storage call: SQLAlchemy cannot be stopped half-way through a session.


def _run_counting_lines(call, signal_at: int = 0) -> int:
    """Runs `call` and returns how many lines of Python ran inside it; sends this process
    SIGINT as line `signal_at` runs (if it runs that many: a call's count varies a little)."""
    count = [0]

    def tracer(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] == signal_at:
                os.kill(os.getpid(), signal.SIGINT)
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count[0]


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_a_signal_inside_a_storage_call_is_raised_when_the_call_has_finished(
    where, tmp_path, request
):
    """Before, Ctrl-C at the wrong line of a report (the worker test saw it on PostgreSQL)
    became `IllegalStateChangeError` and left the thread's session broken (on SQLite holding
    the write lock), so the interrupted trials could not be stored: 16 trials failed as
    "StorageInternalError" and the run exited 1. Now the call finishes and the signal follows."""
    from bln_search.storage import open_storage, set_trial_attrs

    if where == "sqlite":
        url = f"sqlite:///{tmp_path / 's.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    study = optuna.create_study(
        storage=open_storage(url), study_name=f"atomic-{uuid.uuid4().hex[:8]}"
    )
    warm = study.ask()  # each kind of call once untraced: later ones run the same lines
    warm.report(0.5, 0)
    set_trial_attrs(warm, {"a": 1})
    study.tell(warm, 0.5)
    calls = {
        "report": lambda trial: trial.report(0.25, 0),
        "attributes": lambda trial: set_trial_attrs(trial, {"a": 2, "b": 3}),
        "tell": lambda trial: study.tell(trial, 0.75),
    }
    reader = optuna.storages.RDBStorage(url)  # no cache: what the database holds
    outcomes = {}
    restore = interrupts.install()
    try:
        for kind, call in calls.items():
            trial = study.ask()
            lines = _run_counting_lines(lambda: call(trial))  # noqa: B023
            if kind != "tell":
                study.tell(trial, state=FAIL)
            for n in range(1, lines, max(1, lines // 25)):
                trial = study.ask()
                if kind == "tell":
                    trial.report(0.25, 0)
                try:
                    _run_counting_lines(lambda: call(trial), signal_at=n)  # noqa: B023
                    raised = False
                except interrupts.Interrupted:
                    raised = True
                assert raised == (interrupts.received() is not None), (kind, n)
                interrupts._reset()  # as a fresh signal handler
                frozen = reader.get_trial(trial._trial_id)
                # All or nothing (a signal before the storage call stops it from starting),
                # and the storage goes on taking writes.
                written = {
                    "report": frozen.intermediate_values == {0: 0.25},
                    "attributes": frozen.user_attrs == {"a": 2, "b": 3},
                    "tell": (frozen.state, frozen.value) == (COMPLETE, 0.75),
                }[kind]
                nothing = {
                    "report": frozen.intermediate_values == {},
                    "attributes": frozen.user_attrs == {},
                    "tell": frozen.state == RUNNING,
                }[kind]
                assert written or nothing, (kind, n, frozen)
                if raised:
                    outcomes[kind, written] = outcomes.get((kind, written), 0) + 1
                if not (kind == "tell" and written):
                    study.tell(trial, state=FAIL)
    finally:
        restore()
    assert not study.get_trials(states=(RUNNING,))
    # Most lines run inside the storage call (the signal waited for it to finish).
    for kind in calls:
        assert outcomes[kind, True] > outcomes.get((kind, False), 0), outcomes


def test_a_signal_while_a_dead_worker_s_trial_is_failed_waits_for_its_retry(
    tmp_path, cli_signal_handling
):
    """Optuna fails a stale trial, then queues its retry. A signal raised between the two (right
    after the failing write, now that storage calls finish first) left it failed, never retried."""
    from bln_search.heartbeats import fail_stale_trials
    from bln_search.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_seconds=1)
    study = optuna.create_study(storage=storage, study_name="stale")
    dead = study.ask()
    storage.record_heartbeat(dead._trial_id)
    deadline = time.monotonic() + 30  # silent for twice the heartbeat: its worker is dead
    while not storage._get_stale_trial_ids(study._study_id) and time.monotonic() < deadline:
        time.sleep(0.2)  # (SQLite's clock has whole seconds)
    sent = []

    def tracer(frame, event, arg):  # SIGINT as the write that fails it returns
        if event == "return" and frame.f_code.co_name == "set_trial_state_values" and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return tracer

    sys.settrace(tracer)
    try:
        with pytest.raises(interrupts.Interrupted):
            fail_stale_trials(study)
    finally:
        sys.settrace(None)
    assert sent
    trials = optuna.load_study(study_name="stale", storage=storage).trials
    assert trials[dead.number].state == FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert [t.state for t in retries] == [optuna.trial.TrialState.WAITING]


def _build_signalled_inside_the_step():
    """Ctrl-C's handler runs inside TensorFlow's call of Python (a `tf.numpy_function`) in
    training batch 5, so its exception reaches the search as an error of TensorFlow's."""
    import keras
    import tensorflow as tf

    batches = [0]

    def pause(training):
        if training:
            batches[0] += 1
            if batches[0] == 5:
                interrupts._handler(signal.SIGINT, None)  # as Python runs it on Ctrl-C
        return np.bool_(True)

    class Pause(keras.layers.Layer):
        def call(self, inputs, training=None):
            done = tf.numpy_function(pause, [training is True], tf.bool, stateful=True)
            with tf.control_dependencies([done]):
                return tf.identity(inputs)

    model = models._model(compile=False)
    model = keras.Sequential([keras.Input((models.FEATURES,)), Pause(), *model.layers])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("strategy", ["per-trial", "shared"])
def test_a_signal_that_tensorflow_turns_into_its_own_error_still_stops_as_interrupted(
    data, storage, cli_signal_handling, strategy
):
    """Seen in CI: Ctrl-C inside the compiled step reached the search as "RuntimeError:
    pybind11::error_already_set ... REPLACED BY Interrupted", so the run failed with exit 1."""
    with pytest.raises(SearchInterrupted):
        bln_search.search(
            _build_signalled_inside_the_step,
            data,
            study_name="inside",
            storage=storage,
            epochs=3,
            strategy=strategy,
            pruner=None,
        )
    study = optuna.load_study(study_name="inside", storage=storage)
    assert not study.get_trials(states=(RUNNING,))
    stopped = [t for t in study.trials if t.state == FAIL]
    assert stopped and {t.user_attrs.get("fail_reason") for t in stopped} == {"interrupted"}
