"""An Optuna RDB storage whose calls a signal cannot cut in half.

A Ctrl-C (or SIGTERM) raised inside SQLAlchemy's session machinery does not stop
the call cleanly: Optuna's `finally: session.close()` then meets a session still
"in progress" and raises `IllegalStateChangeError` in its place, so the stop
turns into a storage failure, and the thread's session stays broken (on SQLite
it can keep the write lock) for every later call, the writes that would record
the interrupted trials included. Every call of this storage therefore holds
signals until it returns (`interrupts.atomic`), and the signal is raised then.
"""

from __future__ import annotations

import functools
import inspect

from optuna.storages import RDBStorage

from bln_search.interrupts import atomic


def _atomic(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with atomic():
            return method(*args, **kwargs)

    return call


class AtomicRDBStorage(RDBStorage):
    """`RDBStorage`, each of whose methods finishes before a signal is raised."""


for _name, _member in inspect.getmembers(RDBStorage, inspect.isfunction):
    if not _name.startswith("__") and isinstance(
        inspect.getattr_static(RDBStorage, _name), type(_atomic)
    ):
        setattr(AtomicRDBStorage, _name, _atomic(_member))
