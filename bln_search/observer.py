"""Progress events of a search, for live displays and tests; the engine knows no terminal."""

from __future__ import annotations

import optuna

from bln_search.config import StatisticsConfig
from bln_search.trials import TrainingSetup

BATCH_EVENT_SECONDS = 0.1
"""The least time between two `on_batch_start` events of an epoch: rich redraws 10 times a second."""


class SearchObserver:
    """Receives progress events; the CLI's live display is one. All methods are optional."""

    def on_search_start(self, study: optuna.Study, planned: int | None) -> None:
        """The study is ready and this worker is about to take work; `planned` trials in all."""

    def on_training_start(
        self, setup: TrainingSetup, configs: list[StatisticsConfig | None]
    ) -> None:
        """A shared training starts, evaluating `configs` after every epoch (`[None]` for a baseline)."""

    def on_training_end(self, setup: TrainingSetup, epochs: int) -> None:
        """A shared training ended after `epochs` epochs (fewer when every configuration was pruned)."""

    def on_trial_start(self, number: int, config: StatisticsConfig | None) -> None:
        """A trial starts; `config` is None for a baseline."""

    def on_batch_start(self, epoch: int, epochs: int, batch: int, batches: int | None) -> None:
        """Training starts batch `batch` (1-based) of `batches` (None if unknown) in epoch `epoch`.

        Sent for the first batch of each epoch, then at most every `BATCH_EVENT_SECONDS`, so
        a display costs training next to nothing.
        """

    def on_evaluation_start(self, epoch: int, epochs: int, configs: int) -> None:
        """A shared training ended epoch `epoch`'s batches; it now evaluates `configs` configurations."""

    def on_epoch_end(self, number: int, epoch: int, epochs: int, value: float) -> None:
        """Trial `number` reported `value` for epoch `epoch` (1-based) of `epochs`."""

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        """A trial was told its final state."""


class Forwarding(SearchObserver):
    """Passes every event on to `inner`; subclasses override the events they also need."""

    def __init__(self, inner: SearchObserver | None):
        self.inner = inner or SearchObserver()

    def on_search_start(self, study, planned):
        self.inner.on_search_start(study, planned)

    def on_training_start(self, setup, configs):
        self.inner.on_training_start(setup, configs)

    def on_training_end(self, setup, epochs):
        self.inner.on_training_end(setup, epochs)

    def on_trial_start(self, number, config):
        self.inner.on_trial_start(number, config)

    def on_batch_start(self, epoch, epochs, batch, batches):
        self.inner.on_batch_start(epoch, epochs, batch, batches)

    def on_evaluation_start(self, epoch, epochs, configs):
        self.inner.on_evaluation_start(epoch, epochs, configs)

    def on_epoch_end(self, number, epoch, epochs, value):
        self.inner.on_epoch_end(number, epoch, epochs, value)

    def on_trial_end(self, trial):
        self.inner.on_trial_end(trial)
