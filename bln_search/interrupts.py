"""Ctrl-C that cannot get lost.

Python raises `KeyboardInterrupt` wherever the main thread happens to be. If that is
inside a `__del__` (TensorFlow runs many, e.g. when a dataset iterator is freed),
Python prints "Exception ignored" and carries on: the interrupt is lost. So the
CLI's handler also sets a flag, and the training loops check it after every batch
and raise again.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def _handler(signum, frame):
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """Makes SIGINT raise `KeyboardInterrupt` (also in a background job, where the shell ignores it)."""
    _requested.clear()
    signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raises `KeyboardInterrupt` again if a Ctrl-C arrived since `install()`."""
    if _requested.is_set():
        raise KeyboardInterrupt


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
