"""Every exception bln-search raises for a problem a user can act on, in one hierarchy.

Each is a `BLNSearchError` with an `exit_code`; the CLI turns any of them into
one red line and that exit code. Messages name the Python API's parameters in
backticks (`study_name`); the CLI translates those into its flags. Anything
else that escapes is a bug and shows a traceback only under `--debug`.
"""

from __future__ import annotations

import signal

from bln_search import interrupts


class BLNSearchError(Exception):
    """Base class: an expected failure with a message that says what to do."""

    exit_code = 1


class UsageError(BLNSearchError, ValueError):
    """An unknown name (strategy, sampler, baseline, ...) or a combination of settings that cannot work."""


class ConfigError(BLNSearchError, ValueError):
    """A statistics configuration (or a document holding one) is invalid."""


class UserCodeError(BLNSearchError):
    """A `module:fn` spec cannot be loaded, or the function it names failed or returned the wrong thing."""


class DataError(BLNSearchError):
    """The training or validation data has the wrong structure, shapes or size.

    A data function may raise it (or a subclass) itself: its message is shown
    as written, as the one `error:` line, instead of `load_data() raised ...`.
    """


class DatasetUnavailable(DataError):
    """A dataset is neither in Keras's download cache nor downloadable (offline, or a failed
    download); the message names the dataset, its size and the file to put in the cache."""


class StorageError(BLNSearchError):
    """The Optuna storage cannot be reached, or the study in it is missing or incompatible."""


class SearchFailed(BLNSearchError):
    """The search ran, but no trial produced a usable result (or none has finished yet)."""


class SearchInterrupted(BLNSearchError):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the search; every finished trial is stored and a
    re-run resumes. The exit code is 128 + the signal's number, as a shell reports it."""

    def __init__(self, message: str | None = None, signum: int | None = None):
        self.exit_code = interrupts.exit_code() if signum is None else 128 + signum
        super().__init__(
            message
            or f"{interrupted(self.exit_code)}: finished trials are stored; run the same command"
            " again to resume"
        )


def interrupted(exit_code: int) -> str:
    """`interrupted`, naming the signal unless it was Ctrl-C: `interrupted by SIGTERM`."""
    if exit_code == 128 + signal.SIGINT:
        return "interrupted"
    return f"interrupted by {signal.Signals(exit_code - 128).name}"


class TrialFailed(BLNSearchError):
    """One trial failed for a reason that must not stop the search; `reason` is stored on the trial."""

    def __init__(self, message: str, reason: str = "non_finite_loss"):
        super().__init__(message)
        self.reason = reason


class MetricNotReported(BLNSearchError):
    """The ranking metric is not among the model's logs."""

    def __init__(self, metric: str, available):
        names = ", ".join(sorted(available)) or "none"
        super().__init__(f"metric {metric!r} is not one the model reports (available: {names})")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message ("" if it has none): library errors can span pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def training_failed(error: BaseException) -> UserCodeError:
    """The one-line error for an unexpected exception inside the user's model while it trains."""
    return UserCodeError(f"training failed: {type(error).__name__}: {first_line(error)}")


def failure_of(error: BaseException) -> tuple[str, str, BaseException]:
    """The one place that maps an exception ending a trial to (stored reason, stored message, what to raise).

    A `TrialFailed` keeps its own reason and lets the search go on; Ctrl-C is
    `interrupted`; any other error stops the search, a foreign one wrapped
    into a one-line `UserCodeError`. Once a signal has asked the search to stop,
    any error is `interrupted`: its handler may have run inside code that turned
    its exception into another (TensorFlow's call of Python raises its own error).
    """
    from bln_search import interrupts

    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "", error
    if interrupts.received() is not None and not isinstance(error, TrialFailed):
        return "interrupted", "", interrupts.Interrupted(interrupts.received())
    if isinstance(error, TrialFailed):
        return error.reason, str(error), error
    if isinstance(error, BLNSearchError):
        return "error", str(error), error
    wrapped = training_failed(error)
    return "error", str(wrapped), wrapped
