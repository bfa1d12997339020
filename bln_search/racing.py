"""Racing the configurations of one shared training against each other, epoch by epoch.

Optuna's median and successive-halving pruners compare a trial with *other
trials' finished curves*; inside the first shared training there are none, so
they never prune there. Every live configuration of a shared training reports
at the same epoch, though, so they can be raced as they go: after a warm-up,
at every rung, the configurations worse than the median of those that reached
the rung are pruned (successive halving within the training). The best one at
a rung is never worse than the median, so the race always keeps a leader.
"""

from __future__ import annotations

import statistics

import optuna

from bln_search.trials import ATTR_TRAINING


class RacingPruner(optuna.pruners.BasePruner):
    """Prunes a shared training's configurations that are worse than the median at a rung.

    Args:
        warmup_epochs: Epochs every configuration trains before the first rung.
        interval: Epochs between rungs.
        min_live: The race stops halving when this few configurations are left.
        epochs: The training's last epoch, where pruning would save nothing.
    """

    def __init__(
        self,
        warmup_epochs: int = 2,
        interval: int = 2,
        min_live: int = 2,
        epochs: int | None = None,
    ):
        self.warmup_epochs, self.interval, self.min_live = warmup_epochs, interval, min_live
        self.epochs = epochs

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        training = trial.user_attrs.get(ATTR_TRAINING)
        if step is None or training is None:
            return False  # not a shared training's trial: nothing to race against
        epoch = step + 1
        if epoch < self.warmup_epochs or (epoch - self.warmup_epochs) % self.interval:
            return False
        if self.epochs is not None and epoch >= self.epochs:
            return False
        rivals = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(ATTR_TRAINING) == training and step in t.intermediate_values
        ]
        # Those still running after this rung, counting the ones already pruned at it.
        alive = [
            t for t in rivals if t.state == optuna.trial.TrialState.RUNNING or t.last_step == step
        ]
        if len(alive) <= self.min_live:
            return False
        median = statistics.median(t.intermediate_values[step] for t in alive)
        mine = trial.intermediate_values[step]
        if study.direction == optuna.study.StudyDirection.MINIMIZE:
            return mine > median
        return mine < median
