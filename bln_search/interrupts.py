"""Ctrl-C, SIGTERM and SIGHUP that cannot get lost, and cannot cut a write in half.

The CLI's handler makes each of the three signals raise `Interrupted`, a
`KeyboardInterrupt` that remembers which signal it was, so the whole search
stops exactly as on Ctrl-C and exits with 128 + the signal's number.

Python raises `KeyboardInterrupt` wherever the main thread happens to be. If that is
inside a `__del__` or a weakref callback (TensorFlow runs many, e.g. when a
dataset iterator is freed), Python prints "Exception ignored" with a traceback
and carries on: the interrupt is lost. So the handler also sets a flag, the
training loops check it after every batch and raise again, and an unraisable
`Interrupted` is not printed.

Where a trial's results are being stored, half a write is worse than none (a
trial left RUNNING, a finished training stored as interrupted): code there
holds signals with `deferred()` or a `Deferral`, and a signal that arrives
meanwhile is raised when the writes are done. Every call of the storage is held
the same way (`atomic_storage`): a signal inside one breaks the storage itself.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_requested = threading.Event()
_state = {"received": None, "holds": 0, "pending": False}


class Interrupted(KeyboardInterrupt):
    """A stop request from `signum` (SIGINT, SIGTERM or SIGHUP), handled everywhere as Ctrl-C is."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum, frame):
    if _state["received"] is None:
        _state["received"] = signum
    _requested.set()
    if _state["holds"]:
        _state["pending"] = True
        return
    raise Interrupted(signum)


def install(signals: tuple[int, ...] = SIGNALS) -> Callable[[], None]:
    """Makes `signals` (SIGINT, SIGTERM and SIGHUP) raise `Interrupted` in the main thread.

    SIGINT also in a background job, where the shell ignores it; a SIGTERM or
    SIGHUP that is ignored (`nohup`) stays ignored. Returns a function that puts
    the previous handlers back and forgets any signal received meanwhile.
    """
    _reset()
    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        if signum == signal.SIGINT or previous[signum] is not signal.SIG_IGN:
            signal.signal(signum, _handler)
    previous_hook = sys.unraisablehook

    def unraisable(report) -> None:
        if not isinstance(report.exc_value, Interrupted):  # ours is raised again by `check`
            previous_hook(report)

    sys.unraisablehook = unraisable

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        _reset()

    return restore


@contextlib.contextmanager
def ctrl_c_handled():
    """Ctrl-C handled inside the block as the CLI handles it, where nothing else handles it.

    For the Python API: with Python's default handler a `KeyboardInterrupt` can land
    inside a storage call and break the storage, or cut a trial's writes in half.
    Only in the main thread and only over Python's default SIGINT handler (the CLI's,
    or a program's own, stays); SIGTERM is left to the program.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    restore = install((signal.SIGINT,))
    try:
        yield
    finally:
        restore()


def _reset() -> None:
    _requested.clear()
    _state.update(received=None, holds=0, pending=False)


def received() -> int | None:
    """The first signal that arrived since `install()`, if any."""
    return _state["received"]


def exit_code(error: BaseException | None = None) -> int:
    """128 + the number of the signal that stopped the process (130 for a plain Ctrl-C)."""
    signum = getattr(error, "signum", None) or received() or signal.SIGINT
    return 128 + signum


def check() -> None:
    """Raises `Interrupted` again if a signal arrived since `install()` (unless signals are held)."""
    if _requested.is_set() and not _state["holds"]:
        raise Interrupted(received() or signal.SIGINT)


class Deferral:
    """Holds signals from `hold()` until `release()` or the end of its `with` block.

    A signal arriving while held is raised at the release; when the block ends
    with an exception already on its way, that one goes on (the signal stays
    requested, so `check()` still sees it). Holds nest.
    """

    def __init__(self, held: bool = True):
        self.held = False
        if held:
            self.hold()

    # The order of the two updates in `hold` and `release` matters: a signal between them
    # must find the count already raised (in `hold`) or not yet lowered (in `release`).
    def hold(self) -> None:
        if not self.held:
            _state["holds"] += 1
            self.held = True

    def release(self, raise_pending: bool = True) -> None:
        if not self.held:
            return
        self.held = False
        _state["holds"] -= 1
        if not _state["holds"] and _state["pending"]:
            _state["pending"] = False
            if raise_pending:
                raise Interrupted(received() or signal.SIGINT)

    def __enter__(self) -> Deferral:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(raise_pending=exc_type is None)


@contextlib.contextmanager
def deferred():
    """Signals arriving inside the block are raised at its end, so the writes in it complete."""
    with Deferral():
        yield


@contextlib.contextmanager
def atomic():
    """`deferred()` in the main thread, the one thread a signal is raised in; nothing elsewhere.

    For calls that other threads make too (a storage's, from the heartbeat thread):
    a hold taken there would raise the main thread's signal in that thread.
    """
    if threading.current_thread() is threading.main_thread():
        with Deferral():
            yield
    else:
        yield


def interrupt_checker():
    """A Keras callback that calls `check()` before every batch and after every epoch.

    Batch *begin* hooks run synchronously and get no logs, so unlike end hooks
    they neither force a device sync nor turn off Keras's asynchronous dispatch.
    """
    import keras

    class CheckInterrupt(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            check()

        def on_test_batch_begin(self, batch, logs=None):
            check()

        def on_epoch_end(self, epoch, logs=None):
            check()

    return CheckInterrupt()
