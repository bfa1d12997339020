"""Opening Optuna storages, with clear errors and passwords kept out of every message."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

from bln_search.errors import StorageError, first_line
from bln_search.faults import classify
from bln_search.interrupts import atomic

DEFAULT_STORAGE = "sqlite:///bln-search.db"
"""The embedded default: an SQLite file `bln-search.db` in the working directory."""

DEFAULT_HEARTBEAT_SECONDS = 30
"""A running trial writes a heartbeat this often; one silent for twice as long is failed and retried."""

# Workers that open a new database at the same moment race to create its tables.
_SCHEMA_RACE_SIGNS = (
    "UNIQUE constraint failed",
    "already exists",
    "duplicate key",
    "database is locked",
)
_SCHEMA_RACE_RETRIES = 8

# A password in any URL inside a message: everything between the user's ':' and the last '@'
# before the host (a password may hold an unescaped '@'), and `password=` query parameters.
_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*:/+[^:/@\s]*:)(?P<password>[^/\s]*)(?P<tail>@)"
)
_QUERY_PASSWORD = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd)=)(?!\*\*\*)[^&\s'\"]*", re.IGNORECASE
)
_SECRETS: set[str] = set()
"""Every password of a storage URL this process was given, to be masked wherever it reappears
(a database driver repeats the part after an unescaped '@' as a host name)."""
_MIN_SECRET = 4  # shorter pieces are masked in URLs only, so that masking cannot garble the text

SQLITE_WAIT_SECONDS = 60
"""How long an SQLite storage waits for another process's write lock (`?timeout=S` changes it)."""
_opened = {"url": None, "wait": SQLITE_WAIT_SECONDS}  # for faults reported after opening


def _parse(url: str | None):
    """`url` as SQLAlchemy's URL object, or None where SQLAlchemy cannot parse it."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:  # sqlalchemy.exc.ArgumentError, or TypeError for None
        return None


def _secrets_of(url: str) -> set[str]:
    """The password pieces of `url`, as SQLAlchemy parses it and as a person meant it."""
    found = set()
    parsed = _parse(url)
    if parsed is not None:
        found.add(parsed.password or "")
        if parsed.host and "@" in parsed.host:  # SQLAlchemy cut the password at its first '@'
            rest = parsed.host.rpartition("@")[0]
            found |= {rest, f"{parsed.password}@{rest}"}
        for key, value in parsed.query.items():
            if key.lower() in ("password", "passwd", "pwd"):
                found.update([value] if isinstance(value, str) else value)
    # As a person meant it, also where SQLAlchemy cannot parse (no scheme, one slash):
    # the user info is what precedes the last '@' of the authority.
    authority = re.split(r"[/?]", re.sub(r"^[\w+.-]+:/+", "", url), maxsplit=1)[0]
    if "@" in authority:
        found.add(authority.rpartition("@")[0].partition(":")[2])
    return {secret for secret in found if secret}


def mask_url(text: str) -> str:
    """`text` with the password of every URL in it, and of every storage URL seen, as `***`."""
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "***")
    text = _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def display_url(url: str) -> str:
    """`url` as SQLAlchemy renders it with the password hidden (and any `password=` masked)."""
    parsed = _parse(url)
    return mask_url(url if parsed is None else parsed.render_as_string(hide_password=True))


def check_url(url: str) -> str:
    """`url`, its password remembered for masking; refuses what cannot hold a study across commands."""
    _SECRETS.update(_secrets_of(url))
    if "://" not in url:
        raise StorageError(
            f"storage must be a database URL such as {DEFAULT_STORAGE} or "
            f"postgresql://user@host/db, got {mask_url(url)!r}"
        )
    parsed = _parse(url)
    if parsed is None:
        return url  # SQLAlchemy's own error, masked, follows when the storage is opened
    memory = parsed.database in (None, "", ":memory:") or parsed.database.startswith(
        "file::memory:"
    )
    if parsed.get_backend_name() == "sqlite" and (memory or parsed.query.get("mode") == "memory"):
        raise StorageError(
            "an in-memory SQLite storage is gone when the command ends, so nothing could be "
            f"resumed or read back: use a file such as {DEFAULT_STORAGE}"
        )
    return url


def open_storage(
    url: str | None = None,
    *,
    heartbeat_seconds: int | None = DEFAULT_HEARTBEAT_SECONDS,
    concurrent: bool = False,
):
    """An Optuna RDB storage for `url` (default: the SQLite file), checked to be reachable.

    Heartbeats let a worker that was killed mid-trial be detected: its trial is
    failed after `2 * heartbeat_seconds` of silence and re-queued.
    `concurrent`: several local processes will share an SQLite file, so it is
    switched to write-ahead logging (readers never block the writer) on top of
    the 60 s lock wait every SQLite storage gets.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from bln_search.atomic_storage import AtomicRDBStorage

    url = check_url(url or DEFAULT_STORAGE)
    kwargs = {}
    warnings.filterwarnings(
        "ignore", category=optuna.exceptions.ExperimentalWarning, module="bln_search"
    )
    if heartbeat_seconds:
        kwargs = {
            "heartbeat_interval": heartbeat_seconds,
            "grace_period": 2 * heartbeat_seconds,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=3, inherit_intermediate_values=False
            ),
        }
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None and path.is_file() and path.stat().st_size:
            # Read-write: a killed writer's hot journal is rolled back, as any writer's open does.
            _refuse_foreign(_sqlite_tables(path, writable=True), url, to_write=True)
        engine_kwargs["connect_args"] = {"timeout": sqlite_wait(url)}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(_SCHEMA_RACE_RETRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = AtomicRDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if url.startswith("sqlite"):
                if concurrent:
                    with storage.engine.connect() as connection:
                        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                _serialize_sqlite_transactions(storage.engine)
            _opened.update(url=url, wait=sqlite_wait(url))
            return storage
        except Exception as error:  # sqlalchemy raises many types for bad URLs and dead servers
            reason = mask_url(first_line(error) or type(error).__name__)
            if attempt + 1 < _SCHEMA_RACE_RETRIES and any(
                sign in reason for sign in _SCHEMA_RACE_SIGNS
            ):
                time.sleep(
                    0.2 * (attempt + 1)
                )  # another worker is creating the same new database's tables
                continue
            raise _open_failed(url, error) from None


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (also `sqlite:///file:PATH?mode=ro&uri=true`); None for others."""
    parsed = _parse(url)
    if parsed is None or parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    database = parsed.database
    if parsed.query.get("uri") == "true" and database.startswith("file:"):
        database = re.sub(r"^file:(//(?=/))?", "", database)
    return Path(database)


def sqlite_wait(url: str) -> float:
    """Seconds an SQLite storage waits for a write lock: the URL's `?timeout=`, else 60."""
    parsed = _parse(url)
    try:
        return float(
            parsed.query.get("timeout", SQLITE_WAIT_SECONDS) if parsed else SQLITE_WAIT_SECONDS
        )
    except (ValueError, TypeError):
        raise StorageError(f"?timeout= must be a number of seconds in {display_url(url)}") from None


def _sqlite_tables(path: Path, writable: bool = False) -> set[str]:
    """The tables of an SQLite file, read without writing anything to it (unless `writable`:
    then SQLite may roll back the journal of a process killed mid-write, as it must)."""
    import sqlite3

    journal = path.with_name(path.name + "-journal")
    try:
        mode = "" if writable else "?mode=ro"
        connection = sqlite3.connect(f"{path.resolve().as_uri()}{mode}", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {name for (name,) in rows}
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        if not writable and journal.is_file() and journal.stat().st_size:
            raise StorageError(
                f"{path} holds an unfinished write of a process that was killed: the next "
                "`bln-search run` on it recovers it (reading commands never write)"
            ) from None
        raise storage_fault(error, f"sqlite:///{path}") or StorageError(
            f"cannot read {path}: {first_line(error)}"
        ) from None


_OPTUNA_TABLES = ("studies", "trials", "version_info", "alembic_version")


def _refuse_foreign(tables: set[str], url: str, to_write: bool = False) -> None:
    """A database without Optuna's tables is not a storage; to write, an empty one will do.

    (Written to, one with some of Optuna's tables may be a new storage another
    worker is creating this moment.)
    """
    missing = [name for name in _OPTUNA_TABLES if name not in tables]
    if missing and not (to_write and (not tables or set(tables) & set(_OPTUNA_TABLES))):
        holds = f"it holds {', '.join(sorted(tables))}" if tables else "it is empty"
        raise StorageError(
            f"{display_url(url)} is not an Optuna storage ({holds}, but no {missing[0]} table):"
            " check `storage`"
        )


def storage_fault(error: BaseException, url: str | None = None) -> StorageError | None:
    """The storage fault behind `error` in words a user can act on (see `faults.classify`)."""
    url = url or _opened["url"]
    return classify(
        error,
        where=f"storage {display_url(url)}" if url else "the storage",
        wait=sqlite_wait(url) if url else _opened["wait"],
    )


def _open_failed(url: str, error: BaseException) -> StorageError:
    """Why `url` cannot be opened, in one line without its password."""
    path = sqlite_path(url)
    if path is not None and not path.exists() and "unable to open database file" in str(error):
        folder = path.parent
        state = "does not exist" if not folder.is_dir() else "is read-only"
        return StorageError(f"cannot create storage {path}: folder {folder} {state}")
    cause = error  # the driver's words, not Optuna's wrapper ("An exception is raised ...")
    while type(cause).__module__.startswith("optuna") and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    reason = mask_url(first_line(cause) or type(cause).__name__)
    if "@" in (getattr(_parse(url), "host", None) or ""):
        reason += " (write an @ in the password as %40)"
    return storage_fault(error, url) or StorageError(
        f"cannot open storage {display_url(url)}: {reason}"
    )


def open_existing_storage(url: str | None = None):
    """The storage at `url` for reading only: nothing is created and nothing written.

    What Optuna would do on open (create a missing SQLite file, add its tables
    to any database) is checked first: a missing file, a file that is not an
    SQLite database and a database without Optuna's tables are each one
    `StorageError`. SQLite files are then opened read-only, PostgreSQL sessions
    as read-only transactions.
    """
    import sqlite3

    from bln_search.atomic_storage import AtomicRDBStorage

    url = check_url(url or DEFAULT_STORAGE)
    engine_kwargs = {"pool_pre_ping": True}
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise StorageError(f"no storage at {path}: check `storage` (nothing was created)")
        _refuse_foreign(_sqlite_tables(path), url)
        wait, uri = sqlite_wait(url), f"{path.resolve().as_uri()}?mode=ro"
        engine_kwargs["creator"] = lambda: sqlite3.connect(
            uri, uri=True, timeout=wait, check_same_thread=False
        )
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {
            "connect_timeout": 10,
            "options": "-c default_transaction_read_only=on",
        }
    _opened.update(url=url, wait=sqlite_wait(url))
    try:
        return AtomicRDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as error:  # sqlalchemy raises many types for bad URLs and dead servers
        raise _open_failed(url, error) from None


def check_study_name(storage, study_name: str) -> None:
    """Refuses, before any training, a study name longer than the database's column holds.

    SQLite stores text of any length; PostgreSQL (and MySQL) refuse more than
    Optuna's 512 characters, which would otherwise surface only when the study is
    created or, for an existing storage, mid-search.
    """
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name == "sqlite":
        return
    from sqlalchemy import inspect

    columns = inspect(engine).get_columns("studies")
    length = next((c["type"].length for c in columns if c["name"] == "study_name"), None)
    if length and len(study_name) > length:
        raise StorageError(
            f"study name too long for this {engine.dialect.name} storage: {len(study_name)} "
            f"characters, at most {length}; pass a shorter `study_name`"
        )


def _serialize_sqlite_transactions(engine) -> None:
    """Every SQLite transaction takes the write lock when it begins (`BEGIN IMMEDIATE`).

    Optuna pops a queued trial by reading it `FOR UPDATE` and then marking it
    running; SQLite ignores `FOR UPDATE`, and the Python driver starts a
    transaction only at the first write, so two processes could both read the
    same waiting trial and both run it. With `BEGIN IMMEDIATE` the read and the
    write are one atomic step, as on PostgreSQL (SQLAlchemy's documented recipe).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks reconnect with them


def set_trial_attrs(trial, user_attrs: dict, system_attrs: dict | None = None) -> None:
    """Writes attributes of a running trial together: one transaction on an RDB storage.

    Optuna writes each `set_user_attr` as a transaction of its own (on SQLite, a disk sync
    each); a shared training writes eight per trial. Other storages get them one by one.
    Like `set_user_attr`, it also updates the trial's own copy, which pruners read.
    """
    if not user_attrs and not system_attrs:
        return
    _write_trial_attrs(trial, user_attrs, system_attrs)
    cached = getattr(trial, "_cached_frozen_trial", None)  # what `Trial.set_user_attr` updates
    if cached is not None:
        cached.user_attrs.update(user_attrs)


def _write_trial_attrs(trial, user_attrs: dict, system_attrs: dict | None) -> None:
    storage, trial_id = trial.storage, trial._trial_id
    backend = getattr(storage, "_backend", storage)  # Optuna's cache writes through to it
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    try:  # Optuna's internals (4.x, 5.x): another version gets the public path below.
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:
        write = None
    if write is None or not hasattr(backend, "scoped_session"):
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in (system_attrs or {}).items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    # Optuna's own `set_trial_user_attr`, with one session around all of them, which a signal
    # must not cut in half either (`atomic_storage`).
    with atomic(), _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in user_attrs.items():
            write(session, models.TrialUserAttributeModel, trial_id, key, value)
        for key, value in (system_attrs or {}).items():
            write(session, models.TrialSystemAttributeModel, trial_id, key, value)


def load_existing_study(storage, study_name: str):
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        known = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies"
        raise StorageError(f"no study named {study_name!r}{known}") from None


def list_studies(storage):
    """One summary per study in the storage."""
    import optuna

    return optuna.get_all_study_summaries(storage, include_best_trial=False)
