"""The exceptions bln-search raises for problems a user can fix.

The CLI turns each into one red line and a non-zero exit code; anything else is
a bug and shows a traceback only under `--debug`.
"""

from __future__ import annotations


class BLNSearchError(Exception):
    """Base class: an expected failure with a message that says what to do."""

    exit_code = 1


class UserCodeError(BLNSearchError):
    """A `module:fn` spec cannot be loaded, or the function it names failed or returned the wrong thing."""


class DataError(BLNSearchError):
    """The training or validation data has the wrong structure, shapes or size."""


class StorageError(BLNSearchError):
    """The Optuna storage cannot be reached, or the study in it is missing or incompatible."""


class SearchFailed(BLNSearchError):
    """The search ran, but no trial produced a usable result."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message ("" if it has none): library errors can span pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def training_failed(error: BaseException) -> UserCodeError:
    """The one-line error for an unexpected exception inside the user's model while it trains."""
    return UserCodeError(f"training failed: {type(error).__name__}: {first_line(error)}")
