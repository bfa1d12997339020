"""Storages under real faults: read-only, locked, full, foreign, in memory; and no password leaks.

Every fault is real: a file the kernel will not let anyone write (`chattr +i` when the tests
run as root, where permissions do not stop writes), another connection holding SQLite's write
lock, a tmpfs mounted too small. Where the machine cannot make one, the test skips with the
reason, except under `CI=true` as root, where it fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import bln_search
from bln_search.cli import app
from tests.fixtures import models

FIX = str(Path(models.__file__).resolve())
READ_COMMANDS = [["leaderboard"], ["studies"], ["export", "-o", "-"], ["report"]]


def cannot(reason: str):
    """Skips a fault test this machine cannot stage; under CI=true as root it must, so it fails."""
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(f"CI=true as root, yet {reason}")
    pytest.skip(reason)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "unexpected" not in result.output
    return lines[0]


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def run_model(url: str, study: str = "new", *extra: str):
    return run_cli(
        "run", "--model", f"{FIX}:build", "--storage", url, "--study", study, "--epochs", "1",
        "-q", "--sampler", "random", "--trials", "2", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An SQLite file holding one finished study; tests copy it before faulting the copy."""
    path = tmp_path_factory.mktemp("storage") / "study.db"
    bln_search.search(
        models.build,
        bln_search.check_data(models.load_data()),
        study_name="existing",
        storage=f"sqlite:///{path}",
        epochs=1,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=2,
    )
    return path


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    target = tmp_path / "copy.db"
    shutil.copy(finished, target)
    return target


def snapshot(path: Path):
    study = optuna.load_study(study_name="existing", storage=f"sqlite:///{path}")
    return [(t.number, t.state, t.value, t.params) for t in study.trials]


# --- Commands that only read never create or change a storage ---


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_reading_a_missing_file_creates_nothing(tmp_path, command):
    missing = tmp_path / "typo.db"
    line = one_error_line(run_cli(*command, "--storage", f"sqlite:///{missing}"))
    assert "no storage" in line and str(missing) in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_reading_a_foreign_sqlite_database_leaves_it_untouched(tmp_path, command):
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.commit()
    before = digest(path)
    line = one_error_line(run_cli(*command, "--storage", f"sqlite:///{path}"))
    assert "not an Optuna storage" in line
    assert digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_reading_a_file_that_is_not_sqlite(tmp_path, command):
    path = tmp_path / "notes.db"
    path.write_text("just some notes\n" * 100)
    line = one_error_line(run_cli(*command, "--storage", f"sqlite:///{path}"))
    assert "not an SQLite database" in line
    assert path.read_text() == "just some notes\n" * 100


def test_reading_leaves_a_storage_byte_for_byte_unchanged(copy, tmp_path):
    before = digest(copy)
    for command in READ_COMMANDS:
        out = ["report", "-o", str(tmp_path / "r.html")] if command == ["report"] else command
        result = run_cli(*out, "--storage", f"sqlite:///{copy}")
        assert result.exit_code == 0, result.output
    assert digest(copy) == before


def test_writing_into_a_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.commit()
    before = digest(path)
    line = one_error_line(run_model(f"sqlite:///{path}"))
    assert "not an Optuna storage" in line and "notes" in line
    assert digest(path) == before


# --- In-memory SQLite keeps nothing: refused by every command ---


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize(
    "command", [["run", "--model", f"{FIX}:build"], *READ_COMMANDS], ids=lambda c: c[0]
)
def test_in_memory_sqlite_is_refused(url, command):
    line = one_error_line(run_cli(*command, "--storage", url))
    assert "in-memory" in line


# --- Faults while writing ---


@contextlib.contextmanager
def immutable(*paths: Path):
    """Makes `paths` unwritable for everyone: permissions as a user, the immutable flag as root."""
    if os.geteuid() != 0:
        modes = [p.stat().st_mode for p in paths]
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in zip(paths, modes):
                p.chmod(mode)
        return
    if not shutil.which("chattr"):
        cannot("running as root without chattr, so no file can be made read-only")
    made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if made.returncode != 0:
        cannot(f"chattr +i is not permitted here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def test_read_only_file(copy):
    before = snapshot(copy)
    with immutable(copy):
        line = one_error_line(run_model(f"sqlite:///{copy}"))
    assert "read-only" in line
    assert snapshot(copy) == before


def test_read_only_uri(copy):
    before = digest(copy)
    line = one_error_line(run_model(f"sqlite:///file:{copy}?mode=ro&uri=true"))
    assert "read-only" in line
    assert digest(copy) == before


def test_read_only_folder_for_a_new_file(tmp_path):
    folder = tmp_path / "shelf"
    folder.mkdir()
    with immutable(folder):
        line = one_error_line(run_model(f"sqlite:///{folder / 'new.db'}"))
    assert "read-only" in line and str(folder) in line
    assert list(folder.iterdir()) == []


def test_locked_database_says_how_long_it_waited(copy):
    before = snapshot(copy)
    holder = sqlite3.connect(copy, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held throughout
    try:
        line = one_error_line(run_model(f"sqlite:///{copy}?timeout=1"))
    finally:
        holder.rollback()
        holder.close()
    assert "locked" in line and "1 s" in line
    assert snapshot(copy) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: the machine must allow mounting one (root, or a privileged container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        cannot(f"cannot mount a small tmpfs: {made.stderr.strip() or made.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_artifact_store_stops_checkpoints_in_one_line_and_the_search_goes_on(
    tmp_path, small_disk
):
    """Checkpoints are a convenience: a full disk under them warns once and costs no result."""
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as filler:
        while True:
            filler.write(b"\0" * 512)
    result = run_model(
        f"sqlite:///{tmp_path / 'full.db'}", "s", "--artifacts", str(small_disk / "art")
    )
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: checkpoints stopped: cannot write to the artifact store (No space left on "
        "device); the search goes on without them"
    ], result.stderr
    assert "Traceback" not in result.output and ".py:" not in result.stderr
    assert os.listdir(small_disk / "art") == []  # no half-written file
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'full.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2


def test_full_disk(finished, small_disk):
    path = small_disk / "study.db"
    shutil.copy(finished, path)
    # The rest of the disk, to the last byte.
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as filler:
        while True:
            filler.write(b"\0" * 512)
    line = one_error_line(run_model(f"sqlite:///{path}"))
    assert "disk is full" in line


def _stamp(path: Path, revision: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        connection.commit()


@pytest.mark.parametrize(
    "revision, message",
    [("v2.4.0.a", "older Optuna"), ("v99.0.0.a", "newer Optuna")],
    ids=["too-old", "too-new"],
)
@pytest.mark.parametrize("command", [["studies"], ["run", "--model", f"{FIX}:build"]])
def test_schema_written_by_another_optuna(copy, revision, message, command):
    _stamp(copy, revision)
    before = digest(copy)
    line = one_error_line(run_cli(*command, "--storage", f"sqlite:///{copy}"))
    assert message in line
    assert digest(copy) == before


# --- Names the backend cannot store are refused before training ---


def test_study_name_too_long_for_postgresql(postgres_url):
    name = f"long-{uuid.uuid4().hex[:8]}-" + "n" * 600
    result = run_model(postgres_url, name, "--epochs", "50")
    line = one_error_line(result)
    assert "too long" in line and "512" in line
    assert "training" not in result.stderr
    names = [s.study_name for s in optuna.get_all_study_summaries(postgres_url)]
    assert name not in names


# --- Passwords never reach a message ---

LEAKY_URLS = [
    ("postgresql://bln:Sec@ret99@127.0.0.1:1/db", ["Sec@ret99", "ret99"]),
    ("postgresql://bln:Sec@ret99@nohost.invalid/db", ["Sec@ret99", "ret99"]),
    ("postgresql://bln:pa ss99@127.0.0.1:1/db", ["pa ss99", "ss99"]),
    ("postgresql://bln@127.0.0.1:1/db?password=QuerySecret99", ["QuerySecret99"]),
    ("bln:NoScheme99@db-host/bln", ["NoScheme99"]),
    ("postgresql:/bln:OneSlash99@db-host/bln", ["OneSlash99"]),
    ("postgresql://bln:p%40ss%2Fword99@127.0.0.1:1/db", ["p%40ss%2Fword99", "p@ss/word99"]),
]


@pytest.mark.parametrize("url, secrets", LEAKY_URLS, ids=[u for u, _ in LEAKY_URLS])
@pytest.mark.parametrize("command", [["studies"], ["run", "--model", f"{FIX}:build"]])
def test_passwords_are_masked_in_every_message(url, secrets, command):
    result = run_cli(*command, "--storage", url)
    one_error_line(result)
    for secret in secrets:
        assert secret not in result.output
    assert "***" in result.output


def test_mask_url_parses_urls_with_sqlalchemy():
    from bln_search.storage import mask_url

    assert mask_url("postgresql://bln:Sec@ret99@host/db") == "postgresql://bln:***@host/db"
    assert mask_url("x postgresql://u@h/d?password=Q1&sslmode=require y") == (
        "x postgresql://u@h/d?password=***&sslmode=require y"
    )
    assert mask_url("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_a_writer_killed_mid_write_leaves_a_storage_the_next_run_recovers(tmp_path):
    """SIGKILL during a write leaves a hot journal: a writer rolls it back, a reader says so."""
    import sys

    path = tmp_path / "killed.db"
    url = f"sqlite:///{path}"
    bln_search.search(
        models.build,
        bln_search.check_data(models.load_data()),
        study_name="s",
        storage=url,
        epochs=1,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=1,
    )
    writer = (  # a tiny page cache spills the transaction's pages into the file before the kill
        "import os, signal, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('PRAGMA cache_size=2'); c.execute('BEGIN IMMEDIATE'); "
        "c.execute('CREATE TABLE junk(x)'); "
        "c.executemany('INSERT INTO junk VALUES (?)', [('y' * 1000,)] * 2000); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", writer, str(path)], check=False)
    assert (tmp_path / "killed.db-journal").stat().st_size > 0  # a hot journal, really
    result = CliRunner().invoke(app, ["leaderboard", "--storage", url, "--study", "s"])
    assert result.exit_code == 1 and "unfinished write" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    from bln_search.storage import open_storage

    storage = open_storage(url)  # before: "read-only", though only a journal needed rolling back
    assert [s.study_name for s in optuna.get_all_study_summaries(storage, False)] == ["s"]
    assert not (tmp_path / "killed.db-journal").exists()
    result = CliRunner().invoke(app, ["leaderboard", "--storage", url, "--study", "s"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_a_trial_s_attributes_are_written_together_as_optuna_writes_each(tmp_path, where):
    """One transaction on an RDB storage (eight per shared trial before), one by one elsewhere."""
    from sqlalchemy import event

    from bln_search.storage import open_storage, set_trial_attrs

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}") if where == "sqlite" else None
    commits = []
    if storage is not None:
        event.listen(storage.engine, "commit", lambda connection: commits.append(1))
    study = optuna.create_study(storage=storage)
    trial, plain = study.ask(), study.ask()
    user, system = {"history": [0.5, 0.25], "worker": "h:1"}, {"artifacts:1": '{"a": 1}'}
    commits.clear()
    set_trial_attrs(trial, user, system)
    assert len(commits) == (1 if where == "sqlite" else 0)
    assert trial.user_attrs == user  # the trial's own copy too, which pruners read
    for key, value in user.items():
        plain.set_user_attr(key, value)
    for key, value in system.items():
        study._storage.set_trial_system_attr(plain._trial_id, key, value)
    written, expected = (study.tell(t, 1.0) for t in (trial, plain))
    assert written.user_attrs == expected.user_attrs == user
    assert {k: written.system_attrs[k] for k in system} == system
    assert {k: expected.system_attrs[k] for k in system} == system
