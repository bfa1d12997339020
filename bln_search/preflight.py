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
from bln_search.loading import Data, build_model, check_data_fits_model, takes_trial
from bln_search.trials import TrainingSetup

__all__ = ["check_labels", "check_metric", "preflight"]


def preflight(
    model_factory: Callable[..., Any],
    data: Data,
    metric: str,
    setup: TrainingSetup,
    baselines: Sequence[str] = (),
):
    """Builds the model once and evaluates a batch, so bad input fails before the study is touched.

    Checks what the first batch would miss: labels out of the model's range,
    a metric the model does not report or that the flags cannot change, and
    baselines that cannot be built. Returns `(model, trial)`: the model built
    under `setup.seed` exactly as a training would build it (the first shared
    training starts from it), and the trial it was given (None for a plain factory).
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
    try:
        if data.is_dataset:
            logs = model.evaluate(data.validation.take(1), verbose=0, return_dict=True)
        else:
            x, y = data.validation
            logs = model.evaluate(
                x[: setup.batch_size], y[: setup.batch_size], verbose=0, return_dict=True
            )
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
