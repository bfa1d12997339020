"""Final training (or fine-tuning) under a chosen statistics configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bln_search.config import StatisticsConfig
from bln_search.errors import UsageError, UserCodeError, first_line, training_failed
from bln_search.loading import Data, build_model, check_data_fits_model


def train(
    model_factory: Callable[[], Any],
    data: Data,
    config: StatisticsConfig,
    *,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    output: str | Path | None = None,
):
    """Builds the model, applies `config`, fits with the epoch-reset callback and saves it.

    Returns `(model, validation metrics dict)`. The validation metrics are
    measured under `config`, after training.
    """
    import keras

    from bln_search.layer_tools import ResetPopulationStatistics, configure

    if output is not None and Path(output).suffix != ".keras":
        raise UsageError(f"`output` must end in .keras, got {output}")
    keras.utils.set_random_seed(seed)
    model = build_model(model_factory)
    check_data_fits_model(data, model)
    configure(model, config)
    try:
        model.fit(
            **data.fit_kwargs(batch_size, validation=False),
            epochs=epochs,
            verbose=0,
            callbacks=[ResetPopulationStatistics()],
        )
    except Exception as error:
        raise training_failed(error) from error
    metrics = evaluate(model, data.validation, batch_size, prefix="val_")
    if output is not None:
        model.save(output)
    return model, metrics


def evaluate(model, data, batch_size: int, prefix: str) -> dict[str, float]:
    """`model.evaluate` on `(x, y)` arrays (batched like training) or a dataset, names prefixed."""
    try:
        if isinstance(data, tuple):
            metrics = model.evaluate(*data, batch_size=batch_size, verbose=0, return_dict=True)
        else:
            metrics = model.evaluate(data, verbose=0, return_dict=True)
    except Exception as error:
        raise UserCodeError(
            f"evaluation failed: {type(error).__name__}: {first_line(error)}"
        ) from error
    return {f"{prefix}{name}": float(value) for name, value in metrics.items()}
