"""Final training (or fine-tuning) under a chosen statistics configuration (imports Keras)."""

from __future__ import annotations

import numbers
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
    expected_model: Mapping[str, Any] | None = None,
):
    """Builds the model (or loads `initial_model`), applies `config`, fits and saves it.

    `params`: the factory's own searched values, replayed through an
    `optuna.trial.FixedTrial` for a factory that takes a `trial`. `keep="best"`
    restores the weights (population statistics included) of the epoch with the
    best `metric` under `config`; `"last"` keeps the last epoch's.
    `initial_model` continues a saved `.keras` model from `initial_epoch`
    (fine-tuning, or the rest of a training); with `keep="best"` the loaded model
    itself is a candidate, kept (best epoch `initial_epoch`) when no epoch improves
    on it. `expected_model`: the export's record of the model the search ran
    (`training.model_check`); a factory that builds another one is refused.
    `batch_size`: 32 for arrays by
    default (the whole set if smaller); a batched dataset trains at its own, and any other is refused, as
    is one larger than the training set (Keras would quietly train at the
    set's size). Returns `(model, validation metrics dict, best epoch)`; the
    metrics are measured under `config`.
    """
    from bln_search.evaluation import evaluation_batch_size
    from bln_search.layer_tools import (
        ResetPopulationStatistics,
        configure,
        find_bln_layers,
        grouped_inference,
    )

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
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UsageError(f"`seed` must be a whole number >= 0, got {seed!r}")
    batch_size = training_batch_size(data, batch_size)
    keras.utils.set_random_seed(seed)
    model = _initial_model(model_factory, params, initial_model, expected_model)
    check_data_fits_model(data, model)
    if not find_bln_layers(model):
        whose = initial_model if initial_model is not None else "the factory's model"
        raise UsageError(
            f"{whose} has no BatchLayerNormalization layer: there is nothing for the "
            "configuration to set"
        )
    configure(model, config)
    best = _KeepBest(metric, direction, active=keep == "best")
    if initial_model is not None:  # the loaded model is a candidate too: training may not beat it
        best.consider(
            model, evaluate(model, data.validation, batch_size, prefix="val_"), initial_epoch
        )
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


def _initial_model(model_factory, params, initial_model, expected_model):
    """A saved model to continue, or the factory's, with its own values replayed."""
    from bln_search.loading import takes_trial

    if initial_model is not None:
        return load_saved_model(initial_model)
    trial = None
    if takes_trial(model_factory):
        import optuna

        if not params:
            raise UsageError(
                "the factory takes a `trial`, but the export holds none of its values: export "
                "the study again with this bln-search"
            )
        trial = optuna.trial.FixedTrial(dict(params))
    model = build_model(model_factory, trial)
    if expected_model:
        check_same_model(model_factory, model, trial, expected_model)
    return model


def load_saved_model(path: str | Path):
    """A `.keras` model file, or `UsageError` in one line saying why it is not one."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"cannot load {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"cannot load {path}: not a Keras model file (a .keras zip archive), or a truncated one"
        )
    try:
        return keras.saving.load_model(path)
    except Exception as error:
        raise UserCodeError(
            f"cannot load {path}: {first_line(error) or type(error).__name__}"
        ) from None


def check_same_model(model_factory, model, trial, expected: Mapping[str, Any]) -> None:
    """`UsageError` when `model_factory` builds another model than the search ran: other
    layers or compile settings, or another search space of its own (`expected`: the
    export's `training.model_check`, as `bln_search.manifest.fingerprint_model` wrote it)."""
    from bln_search.manifest import fingerprint_model, search_space_of

    found = fingerprint_model(model_factory, model, trial is not None)
    if trial is not None:
        differs = expected.get("search_space") not in (None, search_space_of(trial))
    else:
        differs = expected.get("fingerprint") not in (None, found.get("fingerprint"))
    if differs:
        what = "search space" if trial is not None else "layers or compile settings"
        raise UsageError(
            f"{found['name']} builds another model than the search ran ({expected.get('name')}): "
            f"its {what} differ; pass the factory the search ran (to train this one under "
            'these flags anyway, remove "model_check" from the export\'s "training")'
        )


class _KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch by `metric` (all of them: the population
    statistics live in non-trainable weights) and restores them after training."""

    def __init__(self, metric: str, direction: str, active: bool):
        super().__init__()
        self.metric, self.direction, self.active = metric, direction, active
        self.best, self.weights, self.epoch = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        self.consider(self.model, logs or {}, epoch + 1)

    def consider(self, model, logs: dict, epoch: int) -> None:
        """Keeps `model`'s weights as they are after `epoch` if `logs` hold the best value yet."""
        value = logs.get(self.metric)
        if value is None:
            raise MetricNotReported(self.metric, logs)
        if self.best is None or (
            value < self.best if self.direction == "minimize" else value > self.best
        ):
            self.best, self.epoch = value, epoch
            if self.active:
                self.weights = model.get_weights()

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
