"""Storage faults in words a user can act on: read-only, full, locked, foreign, incompatible.

Optuna wraps every database error of a write in one `StorageInternalError`
("... e.g. exceeding max length"), whatever happened; the database's own
message survives along the exception's causes, and is read here.
"""

from __future__ import annotations

from bln_search.errors import StorageError, first_line

# Where database errors come from: a user's own OSError("Read-only file system") is not one.
_DATABASE_MODULES = {"sqlite3", "sqlalchemy", "psycopg", "psycopg2", "pymysql", "MySQLdb", "optuna"}


def classify(
    error: BaseException, where: str = "the storage", wait: float = 60
) -> StorageError | None:
    """The storage fault behind `error`, searched along its causes; None if there is none.

    `where` names the storage in the message (its URL without password);
    `wait` is how long this process waits for an SQLite write lock.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower() if _from_database(error) else ""
        if "readonly" in text or "read-only" in text:
            return StorageError(
                f"{where} is read-only: make it writable, or pass another `storage`"
            )
        if "disk is full" in text or "no space left" in text or "diskfull" in text:
            return StorageError(
                f"{where}: the disk is full; free some space, then run the same command to resume"
            )
        if "database is locked" in text:
            return StorageError(
                f"{where} is locked: another process held its write lock for more than {wait:g} s "
                "(the wait; add ?timeout=SECONDS to an SQLite URL to wait longer)"
            )
        if "file is not a database" in text:
            return StorageError(f"{where} is not an SQLite database: check `storage`")
        if "no such table" in text or "undefinedtable" in text:
            return StorageError(f"{where} is not an Optuna storage: check `storage`")
        if "value too long" in text:
            return StorageError(f"{where} cannot hold a value this long: {first_line(error)}")
        if "no longer compatible with the table schema" in text:
            if "optuna storage upgrade" in text:
                return StorageError(
                    f"{where} was written by an older Optuna: upgrade it with `optuna storage "
                    "upgrade --storage URL` (back it up first)"
                )
            return StorageError(f"{where} was written by a newer Optuna: upgrade optuna")
        error = error.__cause__ or error.__context__
    return None


def _from_database(error: BaseException) -> bool:
    if type(error).__module__.partition(".")[0] in _DATABASE_MODULES:
        return True
    return isinstance(error, RuntimeError) and "table schema" in str(
        error
    )  # Optuna's version check
