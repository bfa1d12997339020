"""What a stored trial *is* for bln-search: its attribute names, its training setup, its configuration,
and whether its work is done.

The engine writes trials and the result views read them; both import this
module, which imports neither (Optuna keeps `optuna/trial/_frozen.py` apart
from `optuna/study/_optimize.py` for the same reason).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

import optuna

from bln_search.baselines import BLN
from bln_search.config import FLAG_NAMES, StatisticsConfig, all_configurations
from bln_search.errors import TrialFailed
from bln_search.storage import set_trial_attrs

# Trial user attributes.
ATTR_FAIL_REASON = "fail_reason"
ATTR_FAIL_MESSAGE = "fail_message"
ATTR_HISTORY = "history"
ATTR_OTHER_METRICS = "other_metrics"  # {validation metric: value per epoch}, besides the ranked one
ATTR_BEST_EPOCH = "best_epoch"
ATTR_EPOCHS_TRAINED = "epochs_trained"
ATTR_FIT_SECONDS = "fit_seconds"
ATTR_SEED = "seed"
ATTR_BATCH_SIZE = "batch_size"
ATTR_STRATEGY = "strategy"
ATTR_WORKER = "worker"  # host:pid of the process that ran the trial
ATTR_RESUMED = "resumed_after"  # the epoch a killed or interrupted training continued after
ATTR_STOPPED = "stopped"  # why a training ended before its epochs (e.g. patience)
ATTR_TRAINING = "training"  # the shared training a trial was evaluated in
ATTR_BASELINE = "baseline"  # set on baseline trials: which normalization replaced BLN
ATTR_REPEAT_OF = "repeat_of"  # a sampled repeat, answered from this earlier trial's result
ATTR_REQUEUED_FROM = "requeued_from"  # a sampler's interrupted trial whose work this one takes up
ATTR_QUEUED = (
    "queued_config"  # set on queued grid trials, so their configuration is known while they wait
)

# Study user attributes.
STUDY_METRIC = "metric"
STUDY_GRID_READY = "grid_ready"
STUDY_TEST = "test"

# Failure reasons.
INTERRUPTED = "interrupted"
DUPLICATE = "duplicate"
NON_FINITE = "non_finite_loss"
FINAL_FAILURES = frozenset({NON_FINITE, DUPLICATE})
"""Failures that would happen again on a re-run, so the configuration counts as done."""

WORKER = f"{socket.gethostname()}:{os.getpid()}"

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED
FAIL = optuna.trial.TrialState.FAIL
RUNNING = optuna.trial.TrialState.RUNNING
WAITING = optuna.trial.TrialState.WAITING


@dataclass(frozen=True)
class TrainingSetup:
    """One training's inputs besides the factory: seed, batch size, and which model.

    `variant` is `"bln"` for the user's model, or a baseline name
    (`bln_search.baselines.BASELINES`) for a copy with its BLN layers replaced.
    """

    seed: int
    batch_size: int
    variant: str = BLN

    @property
    def is_baseline(self) -> bool:
        return self.variant != BLN

    def candidates(self) -> list[StatisticsConfig | None]:
        """What this setup's training evaluates: the 16 configurations, or `[None]` for a baseline."""
        return [None] if self.is_baseline else all_configurations()


def config_of(trial) -> StatisticsConfig | None:
    """The configuration a trial runs (or will run, while it waits in the queue).

    A queued trial's configuration is its `queued_config` until all four flags
    are suggested: another worker may look while only some of them are, and must
    not take the trial for a missing configuration.
    """
    params = trial.params
    if not all(name in params for name in FLAG_NAMES):
        params = trial.user_attrs.get(ATTR_QUEUED) or params
    if all(name in params for name in FLAG_NAMES):
        return StatisticsConfig(*(bool(params[name]) for name in FLAG_NAMES))
    return None


def setup_of(trial) -> TrainingSetup | None:
    """The seed, batch size and model variant a trial trains with (stored when it is queued or started)."""
    attrs = trial.user_attrs
    if ATTR_SEED in attrs and ATTR_BATCH_SIZE in attrs:
        return TrainingSetup(
            int(attrs[ATTR_SEED]), int(attrs[ATTR_BATCH_SIZE]), attrs.get(ATTR_BASELINE, BLN)
        )
    return None


def setup_attrs(setup: TrainingSetup) -> dict:
    """The user attributes that record `setup` on a trial (read back by `setup_of`)."""
    attrs = {ATTR_SEED: setup.seed, ATTR_BATCH_SIZE: setup.batch_size}
    if setup.is_baseline:
        attrs[ATTR_BASELINE] = setup.variant
    return attrs


FLAG_CHOICES = (False, True)
"""Each flag is a categorical parameter with these choices."""


def flag_params(config: StatisticsConfig) -> tuple[dict, dict]:
    """`(params, distributions)` of `config` as a trial stores them (the grid queues them so)."""
    params = config.as_dict()
    return params, {
        name: optuna.distributions.CategoricalDistribution(FLAG_CHOICES) for name in params
    }


def suggest_config(trial: optuna.Trial) -> StatisticsConfig:
    """The trial's flags: queued ones for the grid, the sampler's otherwise (boolean params named like the flags)."""
    return StatisticsConfig(*(trial.suggest_categorical(name, FLAG_CHOICES) for name in FLAG_NAMES))


def is_done(trial) -> bool:
    """Whether a trial's work needs no re-run: complete, pruned, or failed for a reason that would recur."""
    if trial.state in (COMPLETE, PRUNED):
        return True
    return trial.state == FAIL and trial.user_attrs.get(ATTR_FAIL_REASON) in FINAL_FAILURES


def is_duplicate(trial) -> bool:
    """A trial a worker asked for and gave back unrun (its work was already taken): not a result."""
    return trial.user_attrs.get(ATTR_FAIL_REASON) == DUPLICATE


def is_repeat(trial) -> bool:
    """A sampled configuration the study already had, answered without training: not new work."""
    return ATTR_REPEAT_OF in trial.user_attrs


def work_key(trial) -> tuple:
    """What a trial computes: its configuration, its setup, and the factory's own parameters."""
    own = tuple(sorted((k, repr(v)) for k, v in trial.params.items() if k not in FLAG_NAMES))
    return config_of(trial), setup_of(trial), own


def answer_repeat(trial, earlier) -> float:
    """Answers `trial` from `earlier`'s stored result (raises `TrialPruned` for a pruned one)."""
    trial.set_user_attr(ATTR_REPEAT_OF, earlier.number)
    for key in (ATTR_HISTORY, ATTR_BEST_EPOCH, ATTR_EPOCHS_TRAINED, ATTR_OTHER_METRICS):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    if earlier.state == PRUNED:
        raise optuna.TrialPruned(f"answered from trial {earlier.number}, which was pruned")
    return earlier.value


def work_status(study: optuna.Study) -> tuple[set, set, int]:
    """(work done, work waiting or running, number running); work is a (configuration, setup) pair."""
    done, pending, running = set(), set(), 0
    for trial in study.get_trials(deepcopy=False):
        config, setup = config_of(trial), setup_of(trial)
        if config is None and (setup is None or not setup.is_baseline):
            continue
        key = (config, setup)
        if is_done(trial):
            done.add(key)
        elif trial.state in (WAITING, RUNNING):
            pending.add(key)
            running += trial.state == RUNNING
    return done, pending, running


def failure_attrs(reason: str, message: str = "") -> dict:
    """The user attributes that say why a trial failed."""
    return {ATTR_FAIL_REASON: reason, **({ATTR_FAIL_MESSAGE: message} if message else {})}


def record_failure(trial, reason: str, message: str = "") -> None:
    """Stores why a trial failed (the trial is then told FAIL by its caller)."""
    set_trial_attrs(trial, failure_attrs(reason, message))


def best_of(values, direction: str) -> float:
    """The best of `values` in `direction` (NaN for none): one rule for trials, curves and tables."""
    values = [v for v in (values or []) if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan
    return min(values) if direction == "minimize" else max(values)


def best_index(values, direction: str) -> int:
    """The index of the best of `values` (the first one among equals)."""
    pick = min if direction == "minimize" else max
    return pick(range(len(values)), key=values.__getitem__)


def check_finite(name: str, value: float, epoch: int) -> float:
    """`value` as a float, or `TrialFailed` when it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise TrialFailed(f"{name} became {value} in epoch {epoch + 1}", reason=NON_FINITE)
    return value


@dataclass
class Curve:
    """One trial's metric per epoch, written to the storage once at the trial's end."""

    direction: str
    values: list[float] = field(default_factory=list)
    others: dict[str, list[float]] = field(default_factory=dict)

    def add_others(self, logs: dict, metric: str) -> None:
        """Keeps this epoch's other validation metrics, shown beside the ranked one."""
        for name, value in logs.items():
            if name.startswith("val_") and name != metric:
                self.others.setdefault(name, []).append(float(value))

    def best(self) -> float:
        return best_of(self.values, self.direction)

    def best_epoch(self) -> int:
        """The 1-based epoch of the best value (the first among equals)."""
        return best_index(self.values, self.direction) + 1

    def epochs_since_best(self) -> int:
        """Epochs reported after the best one (0: the last epoch was the best so far)."""
        return len(self.values) - 1 - best_index(self.values, self.direction) if self.values else 0

    def attrs(self, fit_seconds: float) -> dict:
        """The trial user attributes that store the curve."""
        attrs = {ATTR_FIT_SECONDS: round(fit_seconds, 3)}
        if self.values:
            attrs[ATTR_HISTORY] = self.values
            attrs[ATTR_BEST_EPOCH] = self.best_epoch()
            attrs[ATTR_EPOCHS_TRAINED] = len(self.values)
        if self.others:
            attrs[ATTR_OTHER_METRICS] = self.others
        return attrs

    def store(self, trial: optuna.Trial, fit_seconds: float) -> None:
        set_trial_attrs(trial, self.attrs(fit_seconds))
