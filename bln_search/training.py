"""Final training (or fine-tuning) under a chosen statistics configuration (imports Keras)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras

from bln_search.config import StatisticsConfig
from bln_search.errors import (
    MetricNotReported,
    UsageError,
    UserCodeError,
    first_line,
    training_failed,
)
from bln_search.interrupts import deferred, interrupt_checker
from bln_search.loading import Data, build_model, check_data_fits_model


def train(
    model_factory: Callable[..., Any] | None,
    data: Data,
    config: StatisticsConfig,
    *,
    epochs: int,
    batch_size: int | None = None,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    metric: str = "val_loss",
    direction: str = "minimize",
    keep: str = "best",
    initial_model: str | Path | None = None,
    initial_epoch: int = 0,
    verbose: int = 0,
    output: str | Path | None = None,
):
    """Builds the model (or loads `initial_model`), applies `config`, fits and saves it.

    `params`: the factory's own searched values, replayed through an
    `optuna.trial.FixedTrial` for a factory that takes a `trial`. `keep="best"`
    restores the weights (population statistics included) of the epoch with the
    best `metric` under `config`; `"last"` keeps the last epoch's.
    `initial_model` continues a saved `.keras` model from `initial_epoch`
    (fine-tuning, or the rest of a training). `batch_size`: 32 for arrays by
    default (the whole set if smaller); a batched dataset trains at its own, and any other is refused, as
    is one larger than the training set (Keras would quietly train at the
    set's size). Returns `(model, validation metrics dict, best epoch)`; the
    metrics are measured under `config`.
    """
    from bln_search.evaluation import evaluation_batch_size
    from bln_search.layer_tools import ResetPopulationStatistics, configure, grouped_inference

    if keep not in ("best", "last"):
        raise UsageError(f"`keep` must be 'best' or 'last', got {keep!r}")
    if output is not None and Path(output).suffix != ".keras":
        raise UsageError(f"`output` must end in .keras, got {output}")
    if output is not None and not Path(output).parent.is_dir():  # known now, not after training
        raise UsageError(f"cannot write {output}: folder {Path(output).parent} does not exist")
    if initial_epoch and initial_model is None:
        raise UsageError(
            "`initial_epoch` continues a saved model: name it with `initial_model`, or leave "
            "`initial_epoch` out to train from scratch"
        )
    if initial_epoch >= epochs:
        raise UsageError(
            f"`initial_epoch` ({initial_epoch}) must be below `epochs` ({epochs}), the epoch "
            "the training ends at"
        )
    batch_size = training_batch_size(data, batch_size)
    keras.utils.set_random_seed(seed)
    model = _initial_model(model_factory, params, initial_model)
    check_data_fits_model(data, model)
    configure(model, config)
    best = _KeepBest(metric, direction, active=keep == "best")
    # Validation in few large steps, grouped like training batches (bln_search.evaluation).
    groups = None if data.is_dataset else batch_size
    physical = (
        None if data.is_dataset else evaluation_batch_size(model, batch_size, data.validation_size)
    )
    with grouped_inference(model, groups):
        try:
            model.fit(
                **data.fit_kwargs(batch_size, evaluation_batch_size=physical),
                epochs=epochs,
                initial_epoch=initial_epoch,
                verbose=verbose,
                callbacks=[ResetPopulationStatistics(), best, interrupt_checker()],
            )
        except Exception as error:
            raise training_failed(error) from error
        best.restore(model)  # inside: the weights it restores include the grouping
    metrics = evaluate(model, data.validation, batch_size, prefix="val_")
    if output is not None:
        with deferred():  # a signal meanwhile waits: never half a model file
            model.save(output)
    return model, metrics, best.epoch


def training_batch_size(data: Data, batch_size: int | None) -> int:
    """The batch size `data` really trains at, or `UsageError` where it cannot be `batch_size`."""
    if data.is_dataset:
        real = data.dataset_batch_size()
        if batch_size is not None and batch_size != real:
            raise UsageError(
                f"cannot train at batch size {batch_size}: the training dataset comes batched "
                f"at {real}, which sets the batch size; batch it with .batch({batch_size})"
            )
        return real
    if batch_size is None:  # as the search's default, and what Keras does with a smaller set
        return min(32, data.train_size)
    if batch_size < 1:
        raise UsageError(f"`batch_size` must be at least 1, got {batch_size}")
    data.check_batch_size(batch_size)
    return batch_size


def _initial_model(model_factory, params, initial_model):
    """A saved model to continue, or the factory's, with its own values replayed."""
    from bln_search.loading import takes_trial

    if initial_model is not None:
        try:
            return keras.saving.load_model(initial_model)
        except Exception as error:
            raise UserCodeError(f"cannot load {initial_model}: {first_line(error)}") from None
    trial = None
    if takes_trial(model_factory):
        import optuna

        if not params:
            raise UsageError(
                "the factory takes a `trial`, but the export holds none of its values: export "
                "the study again with this bln-search"
            )
        trial = optuna.trial.FixedTrial(dict(params))
    return build_model(model_factory, trial)


class _KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch by `metric` (all of them: the population
    statistics live in non-trainable weights) and restores them after training."""

    def __init__(self, metric: str, direction: str, active: bool):
        super().__init__()
        self.metric, self.direction, self.active = metric, direction, active
        self.best, self.weights, self.epoch = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is None:
            raise MetricNotReported(self.metric, logs or {})
        if self.best is None or (
            value < self.best if self.direction == "minimize" else value > self.best
        ):
            self.best, self.epoch = value, epoch + 1
            if self.active:
                self.weights = self.model.get_weights()

    def restore(self, model) -> None:
        if self.active and self.weights is not None:
            model.set_weights(self.weights)


def evaluate(model, data, batch_size: int, prefix: str) -> dict[str, float]:
    """`model.evaluate` on `(x, y)` arrays (batched like training) or a dataset, names prefixed.

    Arrays are evaluated in large steps grouped by `batch_size`: the values of batches
    of `batch_size` (see `bln_search.evaluation`).
    """
    from bln_search.evaluation import evaluation_batch_size
    from bln_search.layer_tools import grouped_inference

    try:
        if isinstance(data, tuple):
            physical = evaluation_batch_size(model, batch_size, len(keras.tree.flatten(data[0])[0]))
            with grouped_inference(model, batch_size):
                metrics = model.evaluate(*data, batch_size=physical, verbose=0, return_dict=True)
        else:
            metrics = model.evaluate(data, verbose=0, return_dict=True)
    except Exception as error:
        raise UserCodeError(
            f"evaluation failed: {type(error).__name__}: {first_line(error)}"
        ) from error
    return {f"{prefix}{name}": float(value) for name, value in metrics.items()}
