"""`bln-search run`: parse the options, start local workers, call `bln_search.search`, show the result."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from bln_search import pruning, strategies
from bln_search.cli._app import StorageOption, app, choices, handles_errors, quiet_libraries, stderr
from bln_search.sampling import SAMPLERS

SETTINGS_ENV = "BLN_SEARCH_WORKER_SETTINGS"

# The choices derive from the registries, so a new sampler, pruner or strategy is one entry there.
Sampler = choices("Sampler", SAMPLERS)
Pruner = choices("Pruner", (pruning.AUTO, *pruning.PRUNERS))
Strategy = choices("Strategy", (strategies.AUTO, *strategies.STRATEGIES))
Direction = choices("Direction", ("auto", "minimize", "maximize"))


@dataclass
class RunOptions:
    """Everything `run` was asked to do, in one serialisable record.

    Local workers receive it as JSON, so an option added here reaches them
    without anyone remembering to forward it.
    """

    model: str
    data: str | None = None
    epochs: int = 5
    batch_sizes: list[int] | None = None  # None: 32 for arrays, a batched dataset's own
    metric: str = "val_loss"
    direction: str | None = None
    sampler: str = "grid"
    trials: int | None = None
    pruner: str = "auto"
    strategy: str = "auto"
    seed: int = 0
    seeds: int = 1
    baselines: bool = False
    test: str | None = None
    study: str | None = None
    workers: int = 1
    configs_per_training: int | None = None
    heartbeat: int = 30
    patience: int | None = 3
    eval_batch_size: int | None = None
    artifacts: str | None = None
    quiet: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunOptions:
        return cls(**json.loads(text))

    @property
    def study_name(self) -> str:
        return self.study or default_study_name(self.model)


def default_study_name(model_spec: str) -> str:
    """`studies/digits_cnn.py:build` -> `digits_cnn-build`."""
    module, _, function = model_spec.rpartition(":")
    stem = Path(module).stem if module.endswith(".py") else module
    return f"{stem}-{function}" if stem and function else model_spec


def parse_batch_sizes(text: str) -> list[int]:
    """`"1,8,32"` -> `[1, 8, 32]`, with a clear error for anything else."""
    from bln_search.errors import UsageError

    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise UsageError(
            f"--batch-sizes must be positive integers separated by commas, e.g. 1,8,32; got "
            f"{text!r}"
        )
    return list(dict.fromkeys(sizes))


@app.command()
@handles_errors
def run(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help=(
                "MODULE:FUNCTION or FILE.py:FUNCTION returning a compiled keras.Model with "
                "BatchLayerNormalization layers."
            ),
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            help=(
                "MODULE:FUNCTION returning (train, validation), or an .npz with x_train, y_train,"
                " x_val, y_val. Default: the model module's load_data()."
            )
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per trial.")] = 5,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Training batch size for array data [default: 32]; a batched dataset sets its own.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Keras log to rank by; a trial scores its best epoch.")
    ] = "val_loss",
    direction: Annotated[
        Direction,
        typer.Option(help="Whether a larger metric is better; auto infers it from the name."),
    ] = "auto",
    sampler: Annotated[
        Sampler,
        typer.Option(help="grid: all 16 configurations once each; tpe/random: --trials samples."),
    ] = "grid",
    trials: Annotated[
        int | None,
        typer.Option(
            min=1, help="Trial budget of the study for tpe/random (a resume runs the rest)."
        ),
    ] = None,
    pruner: Annotated[
        Pruner,
        typer.Option(
            help=(
                "Stops unpromising trials early, fed each epoch's metric. auto: median for "
                "per-trial; racing for shared (the configurations of one training race each "
                "other), none with several seeds."
            )
        ),
    ] = "auto",
    strategy: Annotated[
        Strategy,
        typer.Option(
            help=(
                "shared: one training, every configuration evaluated after each epoch; per-trial:"
                " one training per trial; auto: shared unless the factory takes a `trial`."
            )
        ),
    ] = "auto",
    seed: Annotated[
        int, typer.Option(min=0, help="Seeds every trial's weights and data order alike.")
    ] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Evaluate every configuration under this many seeds (--seed, --seed+1, ...): the "
                "leaderboard shows mean ± std and which configurations tie with the winner."
            ),
        ),
    ] = 1,
    batch_sizes: Annotated[
        str | None,
        typer.Option(
            help=(
                "Comma-separated batch sizes, e.g. 1,8,32: the search runs per batch size, with "
                "one leaderboard and one exported winner each. Overrides --batch-size."
            )
        ),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            "--baselines",
            help=(
                "Also train the model with every BLN layer replaced by BatchNormalization, "
                "LayerNormalization and no normalization, ranked alongside."
            ),
        ),
    ] = False,
    test: Annotated[
        str | None,
        typer.Option(
            help=(
                "Test data, reported for the chosen configurations only, never used to choose: "
                "MODULE:FUNCTION or FILE.npz (x_test, y_test), or a function name in the model's "
                "module, e.g. load_test."
            )
        ),
    ] = None,
    storage: StorageOption = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="Study name. Default: derived from --model; an existing study is resumed."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Local worker processes on this study, this one included. Workers on other "
                "machines just run the same command with the same --storage and --study."
            ),
        ),
    ] = 1,
    configs_per_training: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=16,
            help=(
                "Shared strategy: at most this many configurations per training, so that workers "
                "split one grid. Default: all; with --workers N an even share."
            ),
        ),
    ] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Seconds between a running trial's heartbeats; trials of a worker silent for "
                "twice as long are failed and retried."
            ),
        ),
    ] = 30,
    patience: Annotated[
        int,
        typer.Option(
            min=0,
            help="Stop a training when no configuration improved for this many epochs; 0: never.",
        ),
    ] = 3,
    eval_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=(
                "Samples per validation step (a multiple of the batch size; default: as many as "
                "memory allows). Statistics are still grouped by the batch size: same values."
            ),
        ),
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help=(
                "Folder for checkpoints (each epoch's model, to resume a killed training; each "
                "trial's best, for export --model); shared by workers on many machines. "
                "Default: next to an SQLite file, none for a server storage."
            ),
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Plain log lines instead of the live display.")
    ] = False,
):
    """Search the statistics configurations, storing every trial; re-running resumes."""
    options = RunOptions(
        model=model,
        data=data,
        epochs=epochs,
        batch_sizes=(
            parse_batch_sizes(batch_sizes)
            if batch_sizes
            else [batch_size]
            if batch_size is not None
            else None
        ),
        metric=metric,
        direction=None if Direction(direction).value == "auto" else Direction(direction).value,
        sampler=Sampler(sampler).value,
        trials=trials,
        pruner=Pruner(pruner).value,
        strategy=Strategy(strategy).value,
        seed=seed,
        seeds=seeds,
        baselines=baselines,
        test=test,
        study=study,
        workers=workers,
        configs_per_training=configs_per_training,
        heartbeat=heartbeat,
        patience=patience or None,
        eval_batch_size=eval_batch_size,
        artifacts=artifacts,
        quiet=quiet,
    )
    execute(options, storage)


@app.command("worker", hidden=True)
@handles_errors
def worker(storage: StorageOption = None):
    """A local worker started by `run --workers N`: its settings arrive as JSON in the environment."""
    from bln_search.cli.workers import die_with_parent

    die_with_parent()
    options = RunOptions.from_json(os.environ[SETTINGS_ENV])
    execute(dataclasses.replace(options, quiet=True, test=None), storage, foreground=False)


def execute(options: RunOptions, storage_url: str | None, foreground: bool = True) -> None:
    """Runs one worker of the search `options` describes; the foreground one also starts the others."""
    from bln_search.errors import UsageError

    if options.sampler != "grid" and options.trials is None:
        raise UsageError(f"--sampler {options.sampler} needs --trials N")
    from bln_search import interrupts

    # A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop a run cleanly.
    interrupts.install()
    quiet_libraries(tensorflow=True)
    from bln_search.cli.progress import LiveProgress, LogProgress
    from bln_search.errors import SearchInterrupted
    from bln_search.holdout import load_test_data
    from bln_search.loading import load_data, resolve_callable
    from bln_search.sampling import make_sampler
    from bln_search.searching import search
    from bln_search.storage import check_study_name, load_existing_study, open_storage

    console = stderr()
    factory = resolve_callable(options.model)
    data = load_data(options.data, options.model)
    test_data = load_test_data(options.test, options.model) if options.test else None
    store = open_storage(
        storage_url, heartbeat_seconds=options.heartbeat, concurrent=options.workers > 1
    )
    check_study_name(store, options.study_name)
    progress_cls = LogProgress if options.quiet or not console.is_terminal else LiveProgress
    from bln_search.cli.workers import StartWorkers, WorkerPool, stop_workers

    pool = None
    if foreground and options.workers > 1:
        pool = WorkerPool({SETTINGS_ENV: options.to_json()}, store.url, options.workers - 1)
    interrupted = None
    with progress_cls(console, options.metric) as progress:
        try:
            search(
                factory,
                data,
                study_name=options.study_name,
                storage=store,
                epochs=options.epochs,
                batch_size=options.batch_sizes,
                metric=options.metric,
                direction=options.direction,
                seed=options.seed,
                seeds=options.seeds,
                baselines=options.baselines,
                sampler=make_sampler(options.sampler, options.seed),
                n_trials=options.trials,
                pruner=options.pruner,
                strategy=options.strategy,
                configs_per_training=options.configs_per_training,
                patience=options.patience,
                evaluation_batch_size=options.eval_batch_size,
                workers=options.workers,
                test_data=test_data,
                artifacts=options.artifacts,
                observer=progress if pool is None else StartWorkers(progress, pool),
                study_attrs={"model": options.model, "data": options.data or "load_data()"},
            )
        except SearchInterrupted as error:
            interrupted = error
            exits = stop_workers(pool, stop=True)
        except BaseException:
            stop_workers(pool, stop=True)
            raise
        else:
            try:
                exits = stop_workers(pool, stop=False)  # the other workers may still hold trials
            except KeyboardInterrupt:
                exits = stop_workers(pool, stop=True)
                interrupted = SearchInterrupted()
    from bln_search.cli.results import print_leaderboard, print_test

    finished = load_existing_study(store, options.study_name)
    if interrupted is None and test_data is not None:
        print_test(finished, console)

    print_leaderboard(finished, "table", console)
    if interrupted is not None:
        raise interrupted
    failed = [e for e in exits if e.returncode != 0]
    if failed:
        first = failed[0]
        raise UsageError(
            f"worker {first.number} exited with code {first.returncode}: "
            f"{first.last_line or 'no message'}"
        )
    name = options.study_name  # the user's text: printed as is, quoted for a shell
    console.print(
        f"stored in study {name}; export the best with: bln-search export --study "
        f"{shlex.quote(name)} -o best.json",
        highlight=False,
        markup=False,
    )
