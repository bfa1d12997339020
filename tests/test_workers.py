"""Many workers on one study, and the faults long searches meet: real processes, real PostgreSQL.

The PostgreSQL tests need `BLN_SEARCH_POSTGRES_URL`; `.ci/run` starts a server and sets it
(locally: `eval "$(.ci/postgres start)"`). Without it they skip with that reason, except
under `CI=true`, where they fail instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest

from bln_search.trials import config_of, is_duplicate
from tests.fixtures import models

pytestmark = pytest.mark.slow

FIX = str(Path(models.__file__).resolve())
BIN = Path(sys.executable).parent
COMPLETE = optuna.trial.TrialState.COMPLETE
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_worker(
    storage: str,
    study: str,
    *args: str,
    cwd: Path,
    model: str = "build",
    pause: str = "0.05",
    meet: int = 0,
    hang_at: int = 0,
) -> subprocess.Popen:
    """A `bln-search run` process; the storage URL goes in the environment, as for real users.

    For build_slow (tests/fixtures/models.py): `pause` seconds per batch (a re-run needs none);
    `meet`: so many processes start training together, however far apart they started;
    `hang_at`: this process's training batch that never returns."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "BLN_SEARCH_STORAGE": storage}
    env.update(BLN_TEST_PAUSE=pause, BLN_TEST_HANG_AT=str(hang_at))
    if meet:
        (cwd / "meet").mkdir(exist_ok=True)
        env["BLN_TEST_MEET"] = f"{cwd / 'meet'}:{meet}"
    command = [
        str(BIN / "bln-search"),
        "run",
        "--model",
        f"{FIX}:{model}",
        "--study",
        study,
        "-q",
        *args,
    ]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # a stalled worker must not outlive the test
        process.communicate()
        raise
    assert process.returncode == 0, err
    return err


def wait_for(study_name: str, storage: str, condition, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).trials
        except KeyError:
            continue
        if condition(trials):
            return trials
    raise AssertionError(f"timed out waiting on study {study_name}")


def assert_each_configuration_complete_once(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    complete = [t for t in study.trials if t.state == COMPLETE]
    configs = [config_of(t) for t in complete]
    details = [
        (
            t.number,
            t.state.name,
            config_of(t) and config_of(t).label,
            t.user_attrs.get("worker"),
            t.user_attrs.get("training"),
            t.system_attrs.get("failed_trial"),
            str(t.datetime_start),
            str(t.datetime_complete),
        )
        for t in study.trials
    ]
    assert len(configs) == len(set(configs)) == 16, "\n".join(map(str, details))
    assert not study.get_trials(states=(RUNNING, optuna.trial.TrialState.WAITING))
    return complete


def test_three_workers_started_at_different_times_run_every_configuration_exactly_once(
    postgres_url, tmp_path
):
    name = unique("three")
    workers = []
    for _ in range(3):  # each trains its first trial only once all three have reached theirs
        args = ["--strategy", "per-trial", "--epochs", "3", "--pruner", "none"]
        workers.append(
            start_worker(postgres_url, name, *args, cwd=tmp_path, model="build_slow", meet=3)
        )
        time.sleep(2)
    for process in workers:
        finish(process)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    complete = assert_each_configuration_complete_once(study)
    assert (
        len({t.user_attrs["worker"] for t in complete}) >= 2
    )  # the work was shared, not done by one


def test_the_workers_option_splits_a_shared_grid(postgres_url, tmp_path):
    name = unique("pool")
    args = ["--workers", "3", "--epochs", "3", "--pruner", "none"]
    process = start_worker(postgres_url, name, *args, cwd=tmp_path, model="build_slow", meet=3)
    err = finish(process)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    complete = assert_each_configuration_complete_once(study)
    assert "Traceback" not in err
    sizes = Counter(t.user_attrs["training"] for t in complete)
    assert (
        max(sizes.values()) <= 6 and len(sizes) >= 3
    )  # an even share each: 16 configurations, 3 workers


@pytest.mark.parametrize("strategy", ["per-trial", "shared"])
def test_a_killed_worker_s_trials_are_retried_and_nothing_finished_is_lost(
    postgres_url, tmp_path, strategy
):
    name = unique("kill")
    epochs = 3 if strategy == "per-trial" else 6
    args = ["--strategy", strategy, "--epochs", str(epochs), "--pruner", "none", "--heartbeat", "1"]
    if strategy == "shared":
        args += [
            "--configs-per-training",
            "8",
        ]  # two trainings: kill the second, the first must survive
    # The shared trainings pause in every batch, so the rescuer can repeat the victim's epochs.
    # Per trial, the victim stops for good in its third trial's second epoch (3 batches an
    # epoch), so the test kills it mid-trial without racing it.
    model = "build_slow"
    hang_at = 2 * 3 * epochs + 3 + 1 if strategy == "per-trial" else 0
    victim = start_worker(postgres_url, name, *args, cwd=tmp_path, model=model, hang_at=hang_at)

    def mid_trial(trials):
        done = sum(t.state == COMPLETE for t in trials)
        return done >= (2 if strategy == "per-trial" else 8) and any(
            t.state == RUNNING and t.intermediate_values for t in trials
        )

    wait_for(name, postgres_url, mid_trial)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    study = optuna.load_study(study_name=name, storage=postgres_url)
    finished = {t.number: t.value for t in study.trials if t.state == COMPLETE}
    killed = [t.number for t in study.trials if t.state == RUNNING]
    assert killed and len(killed) == (1 if strategy == "per-trial" else 8)

    finish(start_worker(postgres_url, name, *args, cwd=tmp_path, model=model, pause="0"))
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert_each_configuration_complete_once(study)
    for number in killed:
        assert study.trials[number].state == FAIL  # the heartbeat lapsed...
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert [t.state for t in retries] == [COMPLETE]  # ...and it was retried, once
        assert config_of(retries[0]) == config_of(study.trials[number])
    for number, value in finished.items():
        assert study.trials[number].state == COMPLETE and study.trials[number].value == value


def test_sigint_on_a_postgres_study_stops_cleanly_and_a_rerun_completes(postgres_url, tmp_path):
    name = unique("sigint")
    args = ["--epochs", "6", "--pruner", "none"]  # the re-run repeats them: a study refuses others
    process = start_worker(postgres_url, name, *args, cwd=tmp_path, model="build_slow")
    wait_for(
        name,
        postgres_url,
        lambda trials: any(t.state == RUNNING and t.intermediate_values for t in trials),
    )
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "rank" in err
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert not study.get_trials(states=(RUNNING,))
    stopped = study.get_trials(states=(FAIL,))
    assert len(stopped) == 16 and {t.user_attrs.get("fail_reason") for t in stopped} == {
        "interrupted"
    }
    finish(start_worker(postgres_url, name, *args, cwd=tmp_path, model="build_slow", pause="0"))
    assert_each_configuration_complete_once(
        optuna.load_study(study_name=name, storage=postgres_url)
    )


def test_the_storage_password_is_never_printed(postgres_url, tmp_path):
    from sqlalchemy.engine import make_url

    password = make_url(postgres_url).password
    assert password and len(password) >= 8
    name = unique("secret")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("BLN_SEARCH_STORAGE", None)

    def command(*args):
        return subprocess.run(
            [str(BIN / "bln-search"), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    results = [
        command(
            "run",
            "--model",
            f"{FIX}:build",
            "--epochs",
            "1",
            "--storage",
            postgres_url,
            "--study",
            name,
        ),
        command("leaderboard", "--storage", postgres_url, "--study", name),
        command("leaderboard", "--storage", postgres_url, "--study", name, "--format", "json"),
        command("studies", "--storage", postgres_url),
        command("export", "--storage", postgres_url, "--study", name, "-o", "best.json"),
        command("export", "--storage", postgres_url, "--study", "no-such-study"),
    ]
    assert [r.returncode for r in results] == [0, 0, 0, 0, 0, 1]
    wrong = postgres_url.replace(password, "wrong-password-1234")
    refused = command("leaderboard", "--storage", wrong, "--study", name)
    assert (
        refused.returncode == 1 and refused.stderr.startswith("error:") and "***" in refused.stderr
    )
    outputs = [r.stdout + r.stderr for r in [*results, refused]] + [
        (tmp_path / "best.json").read_text()
    ]
    for text in outputs:
        assert password not in text and "wrong-password-1234" not in text


def test_workers_on_the_default_sqlite_file_share_the_grid(tmp_path):
    """No server needed: local workers share an SQLite file in write-ahead-log mode."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "BLN_TEST_MEET": f"{tmp_path}/meet:3"}
    env.pop("BLN_SEARCH_STORAGE", None)
    (tmp_path / "meet").mkdir()  # the three train their first trials together
    command = [
        str(BIN / "bln-search"),
        "run",
        "--model",
        f"{FIX}:build_slow",
        "-q",
        "--workers",
        "3",
        "--strategy",
        "per-trial",
        "--epochs",
        "3",
        "--pruner",
        "none",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(
        study_name="models-build_slow", storage=f"sqlite:///{tmp_path / 'bln-search.db'}"
    )
    complete = assert_each_configuration_complete_once(study)
    assert len({t.user_attrs["worker"] for t in complete}) == 3


@pytest.mark.parametrize("strategy", ["per-trial", "shared"])
def test_three_plain_runs_on_one_sqlite_study_complete_each_configuration_once(tmp_path, strategy):
    """No `--workers`: three independent runs started together pop the SQLite queue atomically."""
    # Per-trial pops the queue 16 times a run: 48 pops race.
    storage = f"sqlite:///{tmp_path / 'race.db'}"
    args = ["--strategy", strategy, "--epochs", "1", "--pruner", "none"]
    if strategy == "shared":
        args += ["--configs-per-training", "4"]
    runs = [start_worker(storage, "race", *args, cwd=tmp_path) for _ in range(3)]
    for process in runs:
        finish(process)  # every run exits 0
    study = optuna.load_study(study_name="race", storage=storage)
    assert_each_configuration_complete_once(study)
    # No work failed. A run that asks after the queue emptied gives its empty trial back
    # as a `duplicate` (no configuration, not a result): that is bookkeeping, not a failure.
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert all(is_duplicate(t) and config_of(t) is None for t in failed), failed


# TPE's distinct configurations across a resume are checked through the API
# (tests/test_search.py); here the random sampler goes through a real SIGKILL.
@pytest.mark.parametrize("sampler", ["random"])
def test_a_sampler_trains_distinct_configurations_across_a_kill_and_a_rerun(tmp_path, sampler):
    from bln_search.trials import is_repeat

    storage = f"sqlite:///{tmp_path / 'sampled.db'}"
    args = ["--sampler", sampler, "--trials", "8", "--strategy", "per-trial", "--epochs", "1"]
    args += ["--heartbeat", "1"]
    first = start_worker(storage, "sampled", *args, cwd=tmp_path)
    wait_for("sampled", storage, lambda ts: sum(t.state == COMPLETE for t in ts) >= 3)
    first.kill()
    first.communicate()
    finish(start_worker(storage, "sampled", *args, cwd=tmp_path))
    study = optuna.load_study(study_name="sampled", storage=storage)
    assert not study.get_trials(states=(RUNNING,))
    fresh = [t for t in study.trials if t.state == COMPLETE and not is_repeat(t)]
    assert len(fresh) == len({config_of(t) for t in fresh}) == 8


def test_a_trial_killed_before_its_first_heartbeat_does_not_stall_a_rerun(tmp_path):
    """A worker killed between Optuna's ask and its first heartbeat leaves a running trial
    with no heartbeat, which Optuna never finds stale: the re-run waited for it forever."""
    from bln_search.storage import open_storage

    storage = f"sqlite:///{tmp_path / 'orphan.db'}"
    args = ["--sampler", "random", "--trials", "1", "--strategy", "per-trial", "--epochs", "1"]
    args += ["--heartbeat", "1"]
    finish(start_worker(storage, "orphan", *args, cwd=tmp_path))
    study = optuna.load_study(
        study_name="orphan", storage=open_storage(storage, heartbeat_seconds=1)
    )
    orphan = study.ask()  # running, never a heartbeat: its worker "died" right here
    finish(start_worker(storage, "orphan", *args, cwd=tmp_path), timeout=120)
    left = optuna.load_study(study_name="orphan", storage=storage).trials[orphan.number]
    assert left.state == optuna.trial.TrialState.FAIL
