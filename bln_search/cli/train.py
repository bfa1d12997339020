"""`bln-search train`: final training (or fine-tuning) under an exported configuration."""

from __future__ import annotations

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
            help="Training batch size (array data). Default: the one the winner was found at.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed. Default: the search's.", show_default=False)
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
):
    """Final training (or fine-tuning) under an exported configuration; saves the model.

    Defaults come from the export: the batch size the winner was found at, the
    search's epochs and seed, and a `trial` factory's own searched values.
    """
    from bln_search.config import StatisticsConfig, load_document

    document = load_document(config)  # validate before anything slow
    statistics = StatisticsConfig.from_mapping(document["config"])
    training = document.get("training") or {}
    epochs = epochs or int(training.get("epochs", 10))
    batch_size = batch_size or int(training.get("batch_size", 32))
    seed = int(training.get("seed", 0)) if seed is None else seed
    params = document.get("params") or {}
    metric = document.get("metric") or {}
    output_path(output)
    console = stderr()
    quiet_libraries(tensorflow=True)
    from bln_search.loading import load_data, resolve_callable
    from bln_search.training import train as train_model

    factory = resolve_callable(model)
    data_ = load_data(data, model)
    _, metrics, best_epoch = train_model(
        factory,
        data_,
        statistics,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        params=params,
        metric=metric.get("name", "val_loss"),
        direction=metric.get("direction", "minimize"),
        keep="last" if keep_last else "best",
        initial_model=start_from,
        initial_epoch=initial_epoch,
        verbose=1 if console.is_terminal else 0,
        output=output,
    )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    kept = f"epoch {epochs} (last)" if keep_last else f"epoch {best_epoch} (best on validation)"
    own = "".join(f", {k}={v!r}" for k, v in params.items())
    console.print(
        f"trained epochs {initial_epoch + 1}-{epochs} at batch size {batch_size}, seed {seed}, "
        f"under {statistics.label}{own}; kept {kept}: {shown}; saved {output}",
        highlight=False,
        markup=False,
        soft_wrap=True,  # one line, however long: scripts read it
    )
