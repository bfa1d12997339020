"""Checks before a study is touched: the model builds, evaluates and reports the metric; labels fit.

Everything a first batch would miss fails here, in one line, before any
storage write: a metric the flags cannot change, labels out of the model's
range, baselines that cannot be built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna

from bln_search.baselines import replace_bln
from bln_search.errors import DataError, MetricNotReported, UsageError, UserCodeError, first_line
from bln_search.loading import (
    Data,
    build_model,
    check_data_fits_model,
    create_state,
    takes_trial,
)
from bln_search.trials import TrainingSetup

__all__ = ["check_labels", "check_metric", "preflight"]


def preflight(
    model_factory: Callable[..., Any],
    data: Data,
    metric: str,
    setup: TrainingSetup,
    baselines: Sequence[str] = (),
    evaluation_batch_size: int | None = None,
):
    """Builds the model once and evaluates a batch, so bad input fails before the study is touched.

    Checks what the first batch would miss: labels out of the model's range,
    a metric the model does not report or that the flags cannot change, and
    baselines that cannot be built. Returns `(model, trial)`: the model built
    under `setup.seed` exactly as a training would build it (the first shared
    training starts from it), and the trial it was given (None for a plain factory).
    It evaluates one batch as the search will (same batch size, grouped), so the
    search's evaluations reuse the function traced here.
    """
    import keras

    keras.utils.set_random_seed(setup.seed)
    trial = (
        optuna.create_study(sampler=optuna.samplers.RandomSampler(setup.seed)).ask()
        if takes_trial(model_factory)
        else None
    )
    model = build_model(model_factory, trial)
    check_data_fits_model(data, model)
    check_labels(data, model)
    from bln_search.evaluation import evaluation_batch_size as choose_batch
    from bln_search.layer_tools import grouped_inference

    batch = None
    if not data.is_dataset:
        batch = choose_batch(model, setup.batch_size, data.validation_size, evaluation_batch_size)
    try:
        create_state(model, data)  # so the evaluation step below is traced once
        with grouped_inference(model, setup.batch_size if batch else None):
            first = data.validation_dataset(batch or setup.batch_size).take(1)
            logs = model.evaluate(first, verbose=0, return_dict=True)
    except Exception as error:
        message = first_line(error) or type(error).__name__
        raise UserCodeError(f"the model cannot evaluate the validation data: {message}") from None
    check_metric(metric, logs)
    for baseline in baselines:
        replace_bln(model, baseline)  # refuses a model it cannot rebuild, before the study exists
    return model, trial


def check_metric(metric: str, logs) -> None:
    """The ranking metric must be a validation metric the model reports: only those see the flags."""
    validation = {f"val_{name}" for name in logs}
    if metric in validation:
        return
    if metric in logs:
        raise UsageError(
            f"{metric!r} is a training metric: training always uses mini-batch statistics, so "
            f"all 16 configurations would score the same; rank by val_{metric}"
        )
    raise MetricNotReported(metric, validation)


def check_labels(data: Data, model) -> None:
    """Integer labels within the model's classes, for sparse categorical losses (all given arrays)."""
    import numpy as np

    loss = getattr(model, "loss", None)
    loss_name = loss if isinstance(loss, str) else type(loss).__name__ + getattr(loss, "name", "")
    output_shape = getattr(model, "output_shape", None)
    if (
        data.is_dataset
        or "sparse" not in str(loss_name).lower()
        or not isinstance(output_shape, tuple)
        or not isinstance(output_shape[-1], int)
    ):
        return
    classes = output_shape[-1]
    for part, (_, y) in (("training", data.train), ("validation", data.validation)):
        if not np.issubdtype(y.dtype, np.number):
            continue
        low, high = y.min(), y.max()
        if low < 0 or high >= classes or not np.all(np.equal(np.mod(y, 1), 0)):
            bad = (high if high >= classes else low).item()
            raise DataError(
                f"{part} labels must be class indices 0..{classes - 1} for the model's "
                f"{classes} outputs, found {bad!r}"
            )
