"""The `bln-search` command line: parses options, calls the Python API, renders results.

Nothing heavy is imported at module level, so `bln-search --help` is instant;
TensorFlow loads only inside the commands that train.
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="bln-search",
    help="Find the best statistics configuration of Batch Layer Normalization for a Keras model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


class Sampler(str, Enum):
    grid = "grid"
    tpe = "tpe"
    random = "random"


class Pruner(str, Enum):
    auto = "auto"
    median = "median"
    hyperband = "hyperband"
    patient = "patient"
    none = "none"


class Strategy(str, Enum):
    auto = "auto"
    shared = "shared"
    per_trial = "per-trial"


class Direction(str, Enum):
    auto = "auto"
    minimize = "minimize"
    maximize = "maximize"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


StorageOption = Annotated[
    Optional[str],
    typer.Option(
        envvar="BLN_SEARCH_STORAGE",
        show_envvar=True,
        help="Optuna storage URL, e.g. postgresql://user:pass@host/db (the environment variable keeps a password out of your shell history). Default: sqlite:///bln-search.db in the working directory.",
    ),
]


def _console(stderr: bool = False):
    """A rich Console; 120 columns instead of rich's 80 when writing to a file or pipe (logs, CI)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=120)
    return console


def _stderr():
    return _console(stderr=True)


def _import_tensorflow_quietly() -> None:
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


def _quiet_libraries(tensorflow: bool = False) -> None:
    """TensorFlow's C++ logs and Optuna's per-trial INFO lines would drown the display."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if tensorflow:
        _import_tensorflow_quietly()
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by bln-search itself
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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
            _error_line(str(error))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            _error_line("interrupted")
            raise typer.Exit(130) from None
        except Exception as error:  # a bug or an unforeseen library error: still one line
            if _state["debug"]:
                raise
            from bln_search.errors import first_line
            from bln_search.storage import mask_url

            message = first_line(error)
            _error_line(mask_url(f"unexpected {type(error).__name__}: {message} (run with --debug for the traceback)"))
            raise typer.Exit(1) from None

    return wrapper


def _error_line(message: str) -> None:
    from rich.markup import escape

    from bln_search.storage import mask_url

    _stderr().print(f"[bold red]error:[/] {escape(mask_url(message))}", highlight=False, soft_wrap=True)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    """Find the best statistics configuration of Batch Layer Normalization for a Keras model."""
    _state["debug"] = debug
    if version:
        from bln_search import __version__

        print(__version__)
        raise typer.Exit()


def default_study_name(model_spec: str) -> str:
    """`studies/digits_cnn.py:build` -> `digits_cnn-build`."""
    module, _, function = model_spec.rpartition(":")
    stem = Path(module).stem if module.endswith(".py") else module
    return f"{stem}-{function}" if stem and function else model_spec


def _resolve_study_name(storage, study: str | None) -> str:
    from bln_search.errors import StorageError
    from bln_search.storage import list_studies

    if study:
        return study
    names = sorted(s.study_name for s in list_studies(storage))
    if len(names) == 1:
        return names[0]
    if not names:
        raise StorageError("this storage has no studies; run `bln-search run` first")
    raise StorageError(f"this storage has {len(names)} studies, pass --study (one of: {', '.join(names)})")


def _print_leaderboard(study, fmt: Format, console=None) -> None:
    """One table per batch size for people; one frame (with a batch_size column) for machines."""
    from bln_search.render import rich_table, to_text
    from bln_search.results import leaderboard, study_metric

    frame = leaderboard(study)
    if fmt is not Format.table:
        sys.stdout.write(to_text(frame, fmt.value))
        return
    console = console or _console()
    metric, direction = study_metric(study)
    groups = list(frame.groupby("batch_size", sort=True)) if not frame.empty else [(None, frame)]
    for batch_size, group in groups:
        size = f", batch size {batch_size}" if batch_size is not None else ""
        title = f"{study.study_name}{size}: {len(group)} candidates by {metric} ({direction})"
        console.print(rich_table(group, title=title))


@app.command()
@handles_errors
def run(
    model: Annotated[str, typer.Option("--model", "-m", help="MODULE:FUNCTION or FILE.py:FUNCTION returning a compiled keras.Model with BatchLayerNormalization layers.")],
    data: Annotated[Optional[str], typer.Option(help="MODULE:FUNCTION returning (train, validation), or an .npz with x_train, y_train, x_val, y_val. Default: the model module's load_data().")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per trial.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size (for array data; datasets come batched).")] = 32,
    metric: Annotated[str, typer.Option(help="Keras log to rank by; a trial scores its best epoch.")] = "val_loss",
    direction: Annotated[Direction, typer.Option(help="Whether a larger metric is better; auto infers it from the name.")] = Direction.auto,
    sampler: Annotated[Sampler, typer.Option(help="grid: all 16 configurations once each; tpe/random: --trials samples.")] = Sampler.grid,
    trials: Annotated[Optional[int], typer.Option(min=1, help="Trial budget of the study for tpe/random (a resume runs the rest).")] = None,
    pruner: Annotated[Pruner, typer.Option(help="Stops unpromising trials early, fed each epoch's metric. auto: median for per-trial, none for shared (where pruning saves only evaluations).")] = Pruner.auto,
    strategy: Annotated[Strategy, typer.Option(help="shared: one training, every configuration evaluated after each epoch; per-trial: one training per trial; auto: shared unless the factory takes a `trial`.")] = Strategy.auto,
    seed: Annotated[int, typer.Option(help="Seeds every trial's weights and data order alike.")] = 0,
    seeds: Annotated[int, typer.Option(min=1, help="Evaluate every configuration under this many seeds (--seed, --seed+1, ...): the leaderboard shows mean ± std and which configurations tie with the winner.")] = 1,
    batch_sizes: Annotated[Optional[str], typer.Option(help="Comma-separated batch sizes, e.g. 1,8,32: the search runs per batch size, with one leaderboard and one exported winner each. Overrides --batch-size.")] = None,
    baselines: Annotated[bool, typer.Option("--baselines", help="Also train the model with every BLN layer replaced by BatchNormalization, LayerNormalization and no normalization, ranked alongside.")] = False,
    test: Annotated[Optional[str], typer.Option(help="Test data, reported for the chosen configurations only, never used to choose: MODULE:FUNCTION or FILE.npz (x_test, y_test), or a function name in the model's module, e.g. load_test.")] = None,
    storage: StorageOption = None,
    study: Annotated[Optional[str], typer.Option(help="Study name. Default: derived from --model; an existing study is resumed.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes on this study, this one included. Workers on other machines just run the same command with the same --storage and --study.")] = 1,
    configs_per_training: Annotated[Optional[int], typer.Option(min=1, max=16, help="Shared strategy: at most this many configurations per training, so that workers split one grid. Default: all; with --workers N an even share.")] = None,
    heartbeat: Annotated[int, typer.Option(min=1, help="Seconds between a running trial's heartbeats; trials of a worker silent for twice as long are failed and retried.")] = 30,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of the live display.")] = False,
):
    """Search the statistics configurations, storing every trial; re-running resumes."""
    from bln_search.errors import BLNSearchError

    if sampler is not Sampler.grid and trials is None:
        raise BLNSearchError(f"--sampler {sampler.value} needs --trials N")
    from bln_search import interrupts

    # A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop a run cleanly.
    interrupts.install()
    _quiet_libraries(tensorflow=True)
    from bln_search.loading import load_data, resolve_callable
    from bln_search.parts import make_pruner, make_sampler
    from bln_search.progress import LiveProgress, LogProgress
    from bln_search.engine import SearchInterrupted, choose_strategy, infer_direction, search
    from bln_search.storage import open_storage

    console = _stderr()
    factory = resolve_callable(model)
    data_ = load_data(data, model)
    sizes = parse_batch_sizes(batch_sizes) if batch_sizes else [batch_size]
    test_data = load_test_data(test, model) if test else None
    direction_ = infer_direction(metric) if direction is Direction.auto else direction.value
    strategy_ = choose_strategy(strategy.value, factory)
    pruner_ = pruner.value if pruner is not Pruner.auto else ("none" if strategy_ == "shared" else "median")
    store = open_storage(storage, heartbeat_seconds=heartbeat, concurrent=workers > 1)
    study_name = study or default_study_name(model)
    progress_cls = LogProgress if quiet or not console.is_terminal else LiveProgress
    pool = None
    if workers > 1:
        from bln_search.workers import WorkerPool

        units = seeds * len(sizes) * (4 if baselines else 1)
        if configs_per_training is None and strategy_ == "shared" and units < workers:
            configs_per_training = -(-16 * units // workers)  # an even share of the grid per worker
        arguments = [
            "--model", model, "--epochs", str(epochs), "--batch-sizes", ",".join(map(str, sizes)), "--seeds", str(seeds), "--metric", metric,
            "--direction", direction_, "--sampler", sampler.value, "--pruner", pruner_, "--strategy", strategy_,
            "--seed", str(seed), "--study", study_name, "--heartbeat", str(heartbeat), "--quiet",
        ]
        arguments += ["--data", data] if data else []
        arguments += ["--baselines"] if baselines else []
        arguments += ["--trials", str(trials)] if trials else []
        arguments += ["--configs-per-training", str(configs_per_training)] if configs_per_training else []
        pool = WorkerPool(arguments, store.url, workers - 1)
    interrupted = None
    with progress_cls(console, metric) as progress:
        try:
            search(
                factory,
                data_,
                study_name=study_name,
                storage=store,
                epochs=epochs,
                batch_size=sizes,
                metric=metric,
                direction=direction_,
                seed=seed,
                seeds=seeds,
                baselines=baselines,
                sampler=make_sampler(sampler.value, seed),
                n_trials=trials,
                pruner=make_pruner(pruner_, epochs),
                strategy=strategy_,
                configs_per_training=configs_per_training,
                observer=progress if pool is None else _StartWorkers(progress, pool),
                study_attrs={"model": model, "data": data or "load_data()"},
            )
        except SearchInterrupted as error:
            interrupted = error
            exits = _stop_workers(pool, stop=True)
        except BaseException:
            _stop_workers(pool, stop=True)
            raise
        else:
            try:
                exits = _stop_workers(pool, stop=False)  # the other workers may still hold trials
            except KeyboardInterrupt:
                exits = _stop_workers(pool, stop=True)
                interrupted = SearchInterrupted("interrupted: finished trials are stored; run the same command again to resume")
    from bln_search.storage import load_existing_study

    finished = load_existing_study(store, study_name)
    if interrupted is None and test_data is not None:
        _report_test(factory, data_, test_data, finished, console)
    _print_leaderboard(finished, Format.table, console)
    if interrupted is not None:
        raise interrupted
    failed = [e for e in exits if e.returncode != 0]
    if failed:
        first = failed[0]
        raise BLNSearchError(f"worker {first.number} exited with code {first.returncode}: {first.last_line or 'no message'}")
    console.print(f"stored in study [bold]{study_name}[/]; export the best with: bln-search export --study {study_name} -o best.json", highlight=False)


def parse_batch_sizes(text: str) -> list[int]:
    """`"1,8,32"` -> `[1, 8, 32]`, with a clear error for anything else."""
    from bln_search.errors import BLNSearchError

    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise BLNSearchError(f"--batch-sizes must be positive integers separated by commas, e.g. 1,8,32; got {text!r}")
    return list(dict.fromkeys(sizes))


def load_test_data(spec: str, model_spec: str):
    """Test `(x, y)` from `module:fn`, an .npz with x_test and y_test, or a function of the model's module."""
    import numpy as np

    from bln_search.errors import DataError
    from bln_search.loading import _as_pair, call_user, module_of, resolve_callable, split_spec

    if spec.endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as archive:
                return _as_pair((archive["x_test"], archive["y_test"]), "test")
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"cannot read x_test and y_test from {spec}: {error}") from None
    if ":" in spec:
        return _as_pair(call_user(resolve_callable(spec), f"test data function {spec}"), "test")
    loader = getattr(module_of(model_spec), spec, None)
    if not callable(loader):
        raise DataError(f"{split_spec(model_spec)[0]} defines no function {spec}() for --test")
    return _as_pair(call_user(loader, f"{spec}()"), "test")


def _report_test(factory, data, test_data, study, console) -> None:
    from bln_search.holdout import evaluate_winners

    for batch_size, result in evaluate_winners(factory, data, test_data, study).items():
        shown = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
        console.print(
            f"test (batch size {batch_size}, winner [cyan]{result['label']}[/], retrained as in the search; not used for selection): {shown}",
            highlight=False,
        )


class _StartWorkers:
    """Starts the background workers once the study exists and the preflight check passed."""

    def __init__(self, observer, pool):
        self.observer, self.pool = observer, pool

    def __getattr__(self, name):
        return getattr(self.observer, name)

    def on_search_start(self, study, planned):
        self.pool.start()
        self.observer.on_search_start(study, planned)


def _stop_workers(pool, stop: bool) -> list:
    """Waits for the background workers; on an interrupt or error, Ctrl-C's them first."""
    if pool is None or not pool.processes:
        return []
    if stop:
        pool.interrupt()
        return pool.wait(timeout=120)
    return pool.wait()


@app.command()
@handles_errors
def leaderboard(
    study: Annotated[Optional[str], typer.Option(help="Study name (optional when the storage holds one study).")] = None,
    storage: StorageOption = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table for people; csv, json, markdown go to stdout alone.")] = Format.table,
):
    """Show one row per configuration, best first."""
    _quiet_libraries()
    from bln_search.storage import load_existing_study, open_storage

    store = open_storage(storage, heartbeat_seconds=None)
    _print_leaderboard(load_existing_study(store, _resolve_study_name(store, study)), format)


@app.command()
@handles_errors
def studies(storage: StorageOption = None):
    """List the studies in a storage."""
    _quiet_libraries()
    from rich.table import Table

    from bln_search.storage import list_studies, open_storage

    summaries = list_studies(open_storage(storage, heartbeat_seconds=None))
    table = Table(title="studies")
    for column in ("study", "trials", "direction", "metric", "started"):
        table.add_column(column)
    for summary in sorted(summaries, key=lambda s: s.study_name):
        started = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "–"
        table.add_row(summary.study_name, str(summary.n_trials), summary.direction.name.lower(), str(summary.user_attrs.get("metric", "–")), started)
    _console().print(table)


@app.command()
@handles_errors
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON document; - for stdout.")] = Path("best.json"),
    study: Annotated[Optional[str], typer.Option(help="Study name (optional when the storage holds one study).")] = None,
    storage: StorageOption = None,
):
    """Write the best configuration as a versioned JSON document (read back by `train` and `bln_search.load_config`)."""
    import json

    _quiet_libraries()
    from bln_search.results import export_document
    from bln_search.storage import load_existing_study, open_storage

    store = open_storage(storage, heartbeat_seconds=None)
    document = export_document(load_existing_study(store, _resolve_study_name(store, study)))
    text = json.dumps(document, indent=2) + "\n"
    if str(output) == "-":
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        _stderr().print(f"wrote {output}: {document['config']} ({document['metric']['name']} {document['metric']['value']:.4f})", highlight=False)


@app.command()
@handles_errors
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write (self-contained, works offline).")] = Path("report.html"),
    study: Annotated[Optional[str], typer.Option(help="Study name (optional when the storage holds one study).")] = None,
    storage: StorageOption = None,
    png: Annotated[bool, typer.Option("--png", help="Also write the figures as PNG files next to the page, for the terminal crowd.")] = False,
):
    """Validation curves, the flags' importance and the per-batch-size winners, as HTML (and PNG)."""
    _quiet_libraries()
    from bln_search.report import write_html, write_pngs
    from bln_search.storage import load_existing_study, open_storage

    store = open_storage(storage, heartbeat_seconds=None)
    found = load_existing_study(store, _resolve_study_name(store, study))
    written = [write_html(found, output)]
    if png:
        written += write_pngs(found, output)
    _stderr().print("wrote " + ", ".join(str(path) for path in written), highlight=False)


@app.command()
@handles_errors
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="MODULE:FUNCTION or FILE.py:FUNCTION returning a compiled keras.Model.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="JSON written by `bln-search export`.")],
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 10,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to save the trained model (.keras).")] = Path("model.keras"),
    data: Annotated[Optional[str], typer.Option(help="As for `run`. Default: the model module's load_data().")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size (for array data).")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Final training (or fine-tuning) under an exported configuration; saves the model."""
    from bln_search.config import load_config

    statistics = load_config(config)  # validate before anything slow
    _quiet_libraries(tensorflow=True)
    from bln_search.loading import load_data, resolve_callable
    from bln_search.training import train as train_model

    factory = resolve_callable(model)
    data_ = load_data(data, model)
    _, metrics = train_model(factory, data_, statistics, epochs=epochs, batch_size=batch_size, seed=seed, output=output)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    _stderr().print(f"trained {epochs} epochs under {statistics.label}: {shown}; saved {output}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
