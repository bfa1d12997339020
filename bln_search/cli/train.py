"""`bln-search train`: final training (or fine-tuning) under an exported configuration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bln_search.cli._app import app, handles_errors, output_path, quiet_libraries, stderr


@app.command()
@handles_errors
def train(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="MODULE:FUNCTION or FILE.py:FUNCTION returning a compiled keras.Model.",
        ),
    ],
    config: Annotated[
        Path, typer.Option("--config", "-c", help="JSON written by `bln-search export`.")
    ],
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Training epochs. Default: the search's.", show_default=False),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to save the trained model (.keras).")
    ] = Path("model.keras"),
    data: Annotated[
        str | None, typer.Option(help="As for `run`. Default: the model module's load_data().")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=(
                "Training batch size (array data). Default: the one the winner was found at; "
                "another the search tried takes its winner."
            ),
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Random seed. Default: the search's.", show_default=False),
    ] = None,
    start_from: Annotated[
        Path | None,
        typer.Option(
            "--from", help="A saved .keras model to continue (fine-tuning) instead of building one."
        ),
    ] = None,
    initial_epoch: Annotated[
        int, typer.Option(min=0, help="With --from: the epoch it continues from.")
    ] = 0,
    keep_last: Annotated[
        bool,
        typer.Option(
            "--keep-last", help="Keep the last epoch's weights, not the best epoch on validation."
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No progress bar, only the last line (none off a terminal)."
        ),
    ] = False,
):
    """Final training (or fine-tuning) under an exported configuration; saves the model.

    Defaults come from the export: the batch size the winner was found at, the
    search's epochs and seed, and a `trial` factory's own searched values. A
    --batch-size the search tried takes that batch size's winner.
    """
    import contextlib

    from bln_search.config import load_document, training_plan
    from bln_search.errors import DataError, UsageError

    document = load_document(config)  # validate before anything slow
    plan = training_plan(
        document, batch_size=batch_size, epochs=epochs, seed=seed, source=str(config)
    )
    output_path(output)
    from bln_search import interrupts

    # As for `run`: SIGINT (also in a background job), SIGTERM and SIGHUP stop it in one line.
    interrupts.install()
    console = stderr()
    quiet_libraries(tensorflow=True)
    from bln_search.loading import load_data, resolve_callable
    from bln_search.training import train as train_model
    from bln_search.training import training_batch_size

    factory = resolve_callable(model)
    from bln_search.loading import takes_trial

    if plan.params and start_from is None and not takes_trial(factory):
        names = ", ".join(plan.params)
        raise UsageError(
            f"{config} records the searched values of a factory that takes a `trial` ({names}), "
            f"but {model} takes none, so they cannot be used: pass the factory the search ran"
        )
    data_ = load_data(data, model)
    try:
        real_batch_size = training_batch_size(data_, plan.batch_size)
    except (UsageError, DataError) as error:
        if batch_size is not None or plan.batch_size is None:
            raise
        raise type(error)(f"{error} (the winner in {config} was found at it)") from None
    # Keras writes its progress bar to stdout, which stays free of anything but results.
    progress = not quiet and sys.stderr.isatty()
    with contextlib.redirect_stdout(sys.stderr) if progress else contextlib.nullcontext():
        _, metrics, best_epoch = train_model(
            factory,
            data_,
            plan.config,
            epochs=plan.epochs,
            batch_size=real_batch_size,
            seed=plan.seed,
            params=plan.params,
            metric=plan.metric,
            direction=plan.direction,
            keep="last" if keep_last else "best",
            initial_model=start_from,
            initial_epoch=initial_epoch,
            verbose=1 if progress else 0,
            output=output,
            expected_model=plan.model_check,
        )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    if keep_last:
        kept = f"epoch {plan.epochs} (last)"
    elif start_from is not None and best_epoch == initial_epoch:
        kept = f"{start_from} as loaded (no epoch improved on it)"
    else:
        kept = f"epoch {best_epoch} (best on validation)"
    # A saved model keeps the values it was built with; the export's are not replayed then.
    own = "" if start_from else "".join(f", {k}={v!r}" for k, v in plan.params.items())
    found = (
        ""
        if plan.found_at in (None, real_batch_size)
        else f" (the winner at batch size {plan.found_at}; the search did not try {real_batch_size})"
    )
    start = f" from {start_from}" if start_from is not None else ""
    console.print(
        f"trained epochs {initial_epoch + 1}-{plan.epochs}{start} at batch size "
        f"{real_batch_size}, seed {plan.seed}, under {plan.config.label}{found}{own}; kept "
        f"{kept}: {shown}; saved {output}",
        highlight=False,
        markup=False,
        soft_wrap=True,  # one line, however long: scripts read it
    )
