"""The Typer app, its shared options, and the one handler that turns errors into one red line.

Nothing heavy is imported here, so `bln-search --help` is instant; TensorFlow
loads only inside the commands that train.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import typer.core


def _flags_show_no_type(option: typer.core.TyperOption, ctx) -> str | None:
    """Typer shows `<bool>` after on/off flags, which reads as if they took a value: show nothing."""
    if option.is_flag:
        return None
    return _display_type_rich(option, ctx)


_display_type_rich = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flags_show_no_type


def _print_version(value: bool) -> None:
    if value:
        from bln_search import __version__

        print(f"bln-search {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="bln-search",
    help="Find the best statistics configuration of Batch Layer Normalization for a Keras model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
):
    """Find the best statistics configuration of Batch Layer Normalization for a Keras model."""
    _state["debug"] = debug


def choices(name: str, names) -> type[Enum]:
    """A Typer choice type from a registry's names, so the CLI never repeats a list."""
    return Enum(name, {n.replace("-", "_"): n for n in names}, type=str)


# Options every command that reads a study shares, declared once.
StorageOption = Annotated[
    str | None,
    typer.Option(
        envvar="BLN_SEARCH_STORAGE",
        show_envvar=True,
        help=(
            "Optuna storage URL, e.g. postgresql://user:pass@host/db (the environment variable "
            "keeps a password out of your shell history). Default: sqlite:///bln-search.db in the"
            " working directory."
        ),
    ),
]
StudyOption = Annotated[
    str | None, typer.Option(help="Study name (optional when the storage holds one study).")
]

# The Python API names its parameters in backticks; people at a terminal know the flags.
_FLAGS = {
    "study_name": "--study",
    "strategy": "--strategy",
    "configs_per_training": "--configs-per-training",
    "n_trials": "--trials",
    "direction": "--direction",
    "output": "--output",
    "batch_size": "--batch-size",
    "metric": "--metric",
    "sampler": "--sampler",
    "pruner": "--pruner",
    "baselines": "--baselines",
    "storage": "--storage",
    "epochs": "--epochs",
    "seed": "--seed",
    "initial_epoch": "--initial-epoch",
    "initial_model": "--from",
}


def in_flags(message: str) -> str:
    """`message` with the API's `parameter` names replaced by this CLI's flags."""
    return re.sub(r"`(\w+)`", lambda m: _FLAGS.get(m[1], m[0]), message)


def console(stderr: bool = False):
    """A rich Console; 120 columns instead of rich's 80 when writing to a file or pipe (logs, CI)."""
    from rich.console import Console

    made = Console(stderr=stderr)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made = Console(stderr=stderr, width=120)
    return made


def stderr():
    return console(stderr=True)


def error_line(message: str) -> None:
    from rich.markup import escape

    from bln_search.storage import mask_url

    stderr().print(
        f"[bold red]error:[/] {escape(mask_url(message))}", highlight=False, soft_wrap=True
    )


def handles_errors(command):
    """Expected failures -> one red line on stderr and their exit code; tracebacks only with --debug."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from bln_search.errors import BLNSearchError

        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except BLNSearchError as error:
            if _state["debug"]:
                raise
            error = _storage_fault(error) or error
            error_line(in_flags(str(error)))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt as error:  # also SIGTERM and SIGHUP (`interrupts.install`)
            from bln_search.errors import interrupted
            from bln_search.interrupts import exit_code

            error_line(interrupted(exit_code(error)))
            raise typer.Exit(exit_code(error)) from None
        except Exception as error:  # a bug or an unforeseen library error: still one line
            if _state["debug"]:
                raise
            from bln_search.errors import first_line

            fault = _storage_fault(error)
            if fault is not None:
                error_line(in_flags(str(fault)))
                raise typer.Exit(fault.exit_code) from None
            error_line(
                f"unexpected {type(error).__name__}: {first_line(error)} (run with --debug for"
                f" the traceback)"
            )
            raise typer.Exit(1) from None

    return wrapper


def _storage_fault(error: BaseException):
    """The storage fault behind an error (a write refused mid-training reads "training failed")."""
    from bln_search.errors import StorageError
    from bln_search.storage import storage_fault

    return None if isinstance(error, StorageError) else storage_fault(error)


def output_path(path: Path) -> Path:
    """`path` for a file a command will write, checked before any work: its folder must exist."""
    from bln_search.errors import UsageError

    if str(path) == "-":
        return path
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: no permission to write there")
    return path


def program() -> None:
    """The `bln-search` program: `app`, then an exit that waits for nothing it does not need.

    Python joins every non-daemon thread before the process ends, so a thread a model
    factory started (a loader, a logger) would keep a finished search alive until
    Ctrl-C. With such threads left, the output is flushed and the process ends at once.
    Once TensorFlow is loaded, the interpreter's own teardown (TensorFlow's modules and
    native destructors) takes a second or two after the last line; the exit handlers
    run, the output is flushed, and that teardown is skipped.
    """
    try:
        app()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
        left = [t for t in threading.enumerate() if t.is_alive() and not t.daemon]
        if left == [threading.main_thread()]:
            if "tensorflow" not in sys.modules:
                raise
            atexit._run_exitfuncs()  # what a normal exit runs (temporary folders, logging)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 closed off.

    TensorFlow 2.21's native libraries print absl/oneDNN banners at import that
    no environment variable silences; they would break the one-line contract.
    """
    if "tensorflow" in sys.modules or _state["debug"]:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's warnings in one line, `warning: ...`, as errors are (not two, with source)."""
    from rich.markup import escape

    from bln_search.storage import mask_url

    stderr().print(
        f"[bold yellow]warning:[/] {escape(mask_url(str(message)))}",
        highlight=False,
        soft_wrap=True,
    )


def quiet_libraries(tensorflow: bool = False) -> None:
    """TensorFlow's C++ logs and Optuna's per-trial INFO lines would drown the display."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if tensorflow:
        import_tensorflow_quietly()
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(
        optuna.logging.ERROR
    )  # failed trials are reported by bln-search itself
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.showwarning = warning_line


def open_study(storage: str | None, study: str | None):
    """The study a read-only command shows: named, or the storage's only one."""
    from bln_search.errors import StorageError
    from bln_search.storage import list_studies, load_existing_study, open_existing_storage

    store = open_existing_storage(storage)
    if not study:
        names = sorted(s.study_name for s in list_studies(store))
        if not names:
            raise StorageError("this storage has no studies; run `bln-search run` first")
        if len(names) > 1:
            raise StorageError(
                f"this storage has {len(names)} studies, pass --study (one of: "
                f"{', '.join(map(repr, names))})"
            )
        study = names[0]
    return load_existing_study(store, study)
