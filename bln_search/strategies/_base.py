"""What every strategy shares: its settings, its interface, and the loop that takes work."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna

from bln_search.errors import MetricNotReported
from bln_search.heartbeats import OrphanWatch, fail_stale_trials
from bln_search.interrupts import check as check_interrupt
from bln_search.loading import Data
from bln_search.observer import BATCH_EVENT_SECONDS, SearchObserver
from bln_search.sources import TrialSource
from bln_search.trials import check_finite


@dataclass(frozen=True)
class TrainingSettings:
    """How trials train and what they are judged on."""

    epochs: int = 5
    metric: str = "val_loss"
    direction: str = "minimize"
    patience: int | None = (
        None  # stop a training when no live configuration improved for this many epochs
    )
    evaluation_batch_size: int | None = None  # None: chosen by bln_search.evaluation

    def evaluation_batch(self, model, data, batch_size: int) -> int | None:
        """The physical validation batch for arrays (None for a dataset, used as it comes)."""
        from bln_search.evaluation import evaluation_batch_size

        if data.is_dataset:
            return None
        return evaluation_batch_size(
            model, batch_size, data.validation_size, self.evaluation_batch_size
        )


class Strategy:
    """How configurations are trained; `bln_search.search` hands it a trial source and runs it.

    Subclasses set `name`, `takes_trial_factory` (whether a factory that
    suggests hyper-parameters of its own can be used: it must then be built
    once per trial) and `default_pruner`, and implement `run`.
    """

    name: ClassVar[str]
    takes_trial_factory: ClassVar[bool]
    default_pruner: ClassVar[str]
    help: ClassVar[str]

    def __init__(
        self,
        model_factory: Callable[..., Any],
        data: Data,
        settings: TrainingSettings,
        storage=None,
        first_model=None,
        artifacts=None,
    ):
        self.model_factory = model_factory
        self.data = data
        self.settings = settings
        self.storage = storage
        # An Optuna artifact store for checkpoints (bln_search.checkpoints), or None.
        self.artifacts = artifacts
        # (setup, model): a model the preflight check already built under that setup's seed.
        self._ready = first_model
        self._orphans = OrphanWatch(storage)

    def run(
        self,
        study: optuna.Study,
        source: TrialSource,
        observer: SearchObserver,
        limit: int | None = None,
    ) -> None:
        """Takes work from `source` until none is left; every trial it asked for is told before it returns.

        `limit`: the most trials one training may take (shared strategy only).
        """
        raise NotImplementedError

    def _idle(self, study: optuna.Study, source: TrialSource) -> bool:
        """Called with no work available: True to look again (other workers may hand work back)."""
        self._orphans(study)  # a trial killed before its first heartbeat lapses too
        return source.wait_for_others(study, self._poll())

    def _poll(self) -> float:
        from bln_search.heartbeats import heartbeat_interval

        return min(5.0, max(0.5, heartbeat_interval(self.storage) or 5.0))

    @staticmethod
    def _tick(study: optuna.Study) -> None:
        """Between trainings: a pending Ctrl-C stops, and trials of dead workers are failed (and retried)."""
        check_interrupt()
        fail_stale_trials(study)

    def _build(self, setup, trial=None):
        """The model for `setup`: the preflight's when it matches, else one built under the setup's seed.

        The one place that seeds, clears and builds, so every training of a
        setup starts from the same weights whichever strategy runs it.
        """
        import keras

        from bln_search.baselines import replace_bln
        from bln_search.loading import build_model, create_state

        if self._ready is not None and self._ready[0] == setup and trial is None:
            model, self._ready = self._ready[1], None
            create_state(model, self.data)
            return model
        self._ready = None
        # Without gc: a full collection per trial costs more than the fit of a small model.
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(setup.seed)
        model = build_model(self.model_factory, trial)
        if setup.is_baseline:
            model = replace_bln(model, setup.variant)
        create_state(model, self.data)
        return model


def training_logs_value(logs: dict, metric: str, epoch: int) -> float:
    """The metric from one epoch's Keras logs; a non-finite training loss fails the trial."""
    loss = logs.get("loss")
    if loss is not None:
        check_finite("training loss", loss, epoch)
    if metric not in logs:
        raise MetricNotReported(metric, logs)
    return check_finite(metric, logs[metric], epoch)


def batch_events(observer: SearchObserver, epochs: int):
    """A Keras callback that tells `observer` how far the epoch's batches are (`on_batch_start`).

    Throttled: the first batch of each epoch, then at most every
    `BATCH_EVENT_SECONDS`. It hooks the start of a batch, which has no logs:
    a batch-end hook would have Keras turn every batch's logs into Python
    numbers, waiting for the batch's results.
    """
    import keras

    class BatchEvents(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch, self.sent = 0, -math.inf

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.sent = epoch, -math.inf

        def on_train_batch_begin(self, batch, logs=None):
            now = time.monotonic()
            if now - self.sent >= BATCH_EVENT_SECONDS:
                self.sent = now
                steps = self.params.get("steps")
                observer.on_batch_start(self.epoch + 1, epochs, batch + 1, steps)

    return BatchEvents()
