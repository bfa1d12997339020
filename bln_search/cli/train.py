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
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 10,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to save the trained model (.keras).")
    ] = Path("model.keras"),
    data: Annotated[
        str | None, typer.Option(help="As for `run`. Default: the model module's load_data().")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Training batch size (for array data).")
    ] = 32,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Final training (or fine-tuning) under an exported configuration; saves the model."""
    from bln_search.config import load_config

    statistics = load_config(config)  # validate before anything slow
    output_path(output)
    quiet_libraries(tensorflow=True)
    from bln_search.loading import load_data, resolve_callable
    from bln_search.training import train as train_model

    factory = resolve_callable(model)
    data_ = load_data(data, model)
    _, metrics = train_model(
        factory, data_, statistics, epochs=epochs, batch_size=batch_size, seed=seed, output=output
    )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    stderr().print(
        f"trained {epochs} epochs under {statistics.label}: {shown}; saved {output}",
        highlight=False,
        markup=False,
    )
