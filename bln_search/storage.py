"""Opening Optuna storages, with clear errors and passwords kept out of every message."""

from __future__ import annotations

import re
import threading
import time
import warnings

from bln_search.errors import StorageError, first_line

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

_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)"
)


def mask_url(text: str) -> str:
    """Replaces the password of every URL in `text` with `***`."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", str(text))


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
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = url or DEFAULT_STORAGE
    if "://" not in url:
        raise StorageError(
            f"storage must be a database URL such as {DEFAULT_STORAGE} or "
            f"postgresql://user@host/db, got {mask_url(url)!r}"
        )
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
        if concurrent and url.rstrip("/") in ("sqlite:", "sqlite:///:memory:"):
            raise StorageError(
                "an in-memory SQLite database cannot be shared by several workers: use a file"
                " or PostgreSQL"
            )
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(_SCHEMA_RACE_RETRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if url.startswith("sqlite"):
                if concurrent:
                    with storage.engine.connect() as connection:
                        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                _serialize_sqlite_transactions(storage.engine)
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
            raise StorageError(f"cannot open storage {mask_url(url)}: {reason}") from None


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


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats if the storage records them (RDB storages opened by bln-search do)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def _trial_id(trial) -> int:
    """The storage's id of a trial. The one private access to Optuna in bln-search: the public
    heartbeat API (`storage.record_heartbeat`) takes this id, and an ask-and-tell trial exposes it
    nowhere else (`Study.optimize` reads the same attribute for its own heartbeat thread)."""
    return trial._trial_id


class TrialHeartbeats:
    """Records a heartbeat for every live trial of a shared training, through the storage's public API.

    `Study.optimize` runs one heartbeat thread per trial; the ask-and-tell
    trials of a shared training need this instead, so that a killed worker's
    trials become stale and are retried like any other. `live()` returns the
    trials still running (a pruned or failed one needs no more beats).
    """

    def __init__(self, storage, trials, live=None):
        self.interval = heartbeat_interval(storage)
        self.storage = storage
        self.live = live or (lambda: trials)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="bln-search-heartbeat", daemon=True)

    @staticmethod
    def beat_once(storage, trial) -> None:
        """A first heartbeat at once, so a worker killed before training still leaves a stale trial."""
        if heartbeat_interval(storage):
            storage.record_heartbeat(_trial_id(trial))

    def _beat(self) -> None:
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
