"""What to try next: the grid or an Optuna sampler, as trial sources with one interface.

A trial source decides which trials exist and when the work is finished (the
"oracle", as KerasTuner calls it); a strategy (`bln_search.strategies`) runs
what it hands out. `GridSource` queues every (configuration, setup) once per
study and lets workers pop the queue; `SamplerSource` lets an Optuna sampler
suggest configurations within a study-wide budget.
"""

from __future__ import annotations

import time
import warnings

import optuna

from bln_search.config import all_configurations
from bln_search.errors import UsageError
from bln_search.heartbeats import fail_stale_trials
from bln_search.trials import (
    ATTR_FAIL_REASON,
    ATTR_QUEUED,
    ATTR_REQUEUED_FROM,
    COMPLETE,
    FAIL,
    INTERRUPTED,
    PRUNED,
    RUNNING,
    STUDY_GRID_READY,
    WAITING,
    TrainingSetup,
    config_of,
    flag_params,
    is_done,
    is_duplicate,
    is_repeat,
    setup_attrs,
    setup_of,
    work_key,
    work_status,
)


class TrialSource:
    """Hands out the trials of one search; subclasses decide which and how many."""

    is_grid = False

    def repeat_of(self, study: optuna.Study, trial) -> optuna.trial.FrozenTrial | None:
        """An earlier finished trial of the same work, to answer from (never, for the grid)."""
        return None

    def __init__(self, setups: list[TrainingSetup]):
        self.setups = setups

    def prepare(self, study: optuna.Study, created: bool) -> None:
        """Called once the study is created (`created`) or loaded."""

    def planned(self) -> int:
        """How many trials the whole search holds."""
        raise NotImplementedError

    def available(self, study: optuna.Study) -> int:
        """How many trials a worker may take now (0: none)."""
        raise NotImplementedError

    def next_training(self, study: optuna.Study) -> int:
        """How many trials the next shared training takes (they share one setup)."""
        return self.available(study)

    def ask(self, study: optuna.Study) -> optuna.Trial | None:
        """One trial of the next shared training (None: other workers took the rest)."""
        return study.ask()

    def wait_for_others(self, study: optuna.Study, poll: float) -> bool:
        """With nothing available: True (after a pause) while other workers may still hand work back."""
        return False

    def setup_for(self, trial: optuna.Trial) -> TrainingSetup | None:
        """The setup of a trial just asked for, or None when it carries no work (another worker was faster)."""
        raise NotImplementedError

    def recover(self, study: optuna.Study) -> None:
        """After an interrupt or an error: make the stopped work available again."""


class GridSource(TrialSource):
    """Every configuration (or baseline) exactly once per setup, across workers and resumes."""

    is_grid = True

    def __init__(self, setups: list[TrainingSetup]):
        super().__init__(setups)
        self._next: list[int] = []  # storage ids of the next training's queued trials

    def prepare(self, study: optuna.Study, created: bool) -> None:
        if created:
            for setup in self.setups:
                for config in setup.candidates():
                    self._enqueue(study, config, setup)
            study.set_user_attr(STUDY_GRID_READY, True)
        else:
            self._wait_for_grid(study)
        self.recover(study)

    def planned(self) -> int:
        return sum(len(setup.candidates()) for setup in self.setups)

    def available(self, study: optuna.Study) -> int:
        return len(study.get_trials(deepcopy=False, states=(WAITING,)))

    def next_training(self, study: optuna.Study) -> int:
        waiting = study.get_trials(deepcopy=False, states=(WAITING,))
        first = setup_of(waiting[0]) if waiting else None
        self._next = [t._trial_id for t in waiting if setup_of(t) == first]
        return len(self._next)

    def ask(self, study: optuna.Study) -> optuna.Trial | None:
        """Takes the next of the trials `next_training` counted, as `study.ask` pops a queued
        trial (marking it running, unless another worker did first) without reading the
        whole queue again for each: 16 asks read it 16 times."""
        while self._next:
            trial_id = self._next.pop(0)
            try:
                if study._storage.set_trial_state_values(trial_id, state=RUNNING):
                    return optuna.Trial(study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker finished it meanwhile
        return None

    def wait_for_others(self, study: optuna.Study, poll: float) -> bool:
        """True while other workers (or a dead one, until its heartbeat lapses) hold trials of the grid."""
        if work_status(study)[2] == 0:
            return False
        time.sleep(poll)
        return True

    def setup_for(self, trial: optuna.Trial) -> TrainingSetup | None:
        # None: a fresh trial, because another worker took the last queued one between our look and our ask.
        return setup_of(trial)

    def recover(self, study: optuna.Study) -> None:
        """Queues every (configuration, setup) that is neither done, waiting nor running."""
        done, pending, _ = work_status(study)
        for setup in self.setups:
            for config in setup.candidates():
                if (config, setup) not in done and (config, setup) not in pending:
                    self._enqueue(study, config, setup)

    @staticmethod
    def _enqueue(study: optuna.Study, config, setup: TrainingSetup) -> None:
        """Queues one trial with its flags already stored as its parameters, as Optuna's retry
        callback queues a retried trial: suggesting them then writes nothing (`enqueue_trial`
        would leave four writes per trial to its worker)."""
        attrs = setup_attrs(setup)
        params, distributions = flag_params(config) if config is not None else ({}, {})
        if config is not None:
            attrs[ATTR_QUEUED] = config.as_dict()
        study.add_trial(
            optuna.trial.create_trial(
                state=WAITING, params=params, distributions=distributions, user_attrs=attrs
            )
        )

    @staticmethod
    def _wait_for_grid(study: optuna.Study, timeout: float = 60.0) -> None:
        """A worker that loads a study its creator is still queueing waits for the queue."""
        deadline = time.monotonic() + timeout
        while not study.user_attrs.get(STUDY_GRID_READY):
            if time.monotonic() > deadline:
                return  # the creator died while queueing: `recover` queues the rest
            time.sleep(0.5)


class SamplerSource(TrialSource):
    """An Optuna sampler's suggestions, up to `n_trials` distinct pieces of finished work.

    A sampler may suggest a configuration the study already has (after a
    resume, or from another worker): `repeat_of` finds the earlier trial so the
    strategy answers from its stored result instead of training again, and the
    budget counts distinct work only, never repeats or trials of dead workers.
    """

    def __init__(self, setups: list[TrainingSetup], n_trials: int):
        if len(setups) > 1:
            raise UsageError(
                "several seeds, batch sizes or baselines need the grid (every configuration "
                "per seed and batch size)"
            )
        if not n_trials:
            raise UsageError("a sampler needs a trial budget (`n_trials`)")
        super().__init__(setups)
        self.n_trials = n_trials
        self._repeats = 0  # in a row, since the last nudge
        self._in_a_row = 0  # in a row, since the last new work
        self._exhausted = False

    def prepare(self, study: optuna.Study, created: bool) -> None:
        if not created:  # a resume or a second worker: not the first process's suggestions again
            study.sampler.reseed_rng()
            self.recover(study)

    def recover(self, study: optuna.Study) -> None:
        """Queues the work of interrupted trials again (their flags, setup and the factory's
        own values), so the same command continues them from their last checkpoint instead
        of sampling other work. A killed worker's trials are queued by the storage's
        heartbeat retry (`bln_search.storage`)."""
        trials = study.get_trials(deepcopy=False)
        taken_up = {t.user_attrs.get(ATTR_REQUEUED_FROM) for t in trials}
        done = {work_key(t) for t in trials if is_done(t) or t.state == RUNNING}
        for trial in trials:
            if (
                trial.state != FAIL
                or trial.user_attrs.get(ATTR_FAIL_REASON) != INTERRUPTED
                or trial.number in taken_up
                or config_of(trial) is None  # stopped before its flags were suggested
                or work_key(trial) in done
            ):
                continue
            setup = setup_of(trial)
            attrs = {**(setup_attrs(setup) if setup else {}), ATTR_REQUEUED_FROM: trial.number}
            study.enqueue_trial(dict(trial.params), user_attrs=attrs)

    def planned(self) -> int:
        return self.n_trials

    def available(self, study: optuna.Study) -> int:
        trials = study.get_trials(deepcopy=False)
        done = {
            work_key(t) for t in trials if is_done(t) and not is_repeat(t) and not is_duplicate(t)
        }
        running = sum(t.state == RUNNING for t in trials)
        left = min(self.n_trials - len(done), self._distinct_left(done)) - running
        if left > 0 and self._in_a_row >= _GIVE_UP_AFTER and not self._exhausted:
            warnings.warn(
                f"the sampler suggested only work the study already has, {_GIVE_UP_AFTER} times "
                f"in a row: stopping with {len(done)} of {self.n_trials} distinct trials (its "
                f"search space looks exhausted)",
                stacklevel=1,
            )
            self._exhausted = True
        return 0 if self._exhausted else left

    def _distinct_left(self, done: set) -> int:
        """Configurations never tried (a factory with parameters of its own has no such limit)."""
        flags_only = all(not own for _, _, own in done)
        return 16 - len(done) if flags_only else self.n_trials

    def wait_for_others(self, study: optuna.Study, poll: float) -> bool:
        """True while trials still run: a live worker finishes them, a dead one's are failed and retried."""
        if not study.get_trials(deepcopy=False, states=(RUNNING,)):
            return False
        time.sleep(poll)
        fail_stale_trials(study)
        return True

    def setup_for(self, trial: optuna.Trial) -> TrainingSetup:
        setup = self.setups[0]
        for key, value in setup_attrs(setup).items():
            trial.set_user_attr(key, value)
        return setup

    def repeat_of(self, study: optuna.Study, trial) -> optuna.trial.FrozenTrial | None:
        """A finished trial of the same work as `trial` (its flags, setup and own parameters).

        A sampler that keeps repeating itself (TPE can, once it is sure of a few
        configurations) is nudged: after `_NUDGE_AFTER` repeats in a row, an untried
        configuration is queued for the next trial, so a budget always finishes.
        """
        key = work_key(trial)
        for earlier in study.get_trials(deepcopy=False, states=(COMPLETE, PRUNED)):
            if earlier.number != trial.number and not is_repeat(earlier):
                if work_key(earlier) == key:
                    self._repeats += 1
                    self._in_a_row += 1
                    if self._repeats >= _NUDGE_AFTER:
                        self._repeats = 0
                        self._queue_untried(study, key[2])
                    return earlier
        self._repeats = self._in_a_row = 0
        return None

    def _queue_untried(self, study: optuna.Study, own: tuple) -> None:
        if own:  # a factory with values of its own: its space cannot be listed
            return
        known = {work_key(t)[0] for t in study.get_trials(deepcopy=False)}
        untried = [c for c in all_configurations() if c not in known]
        if untried:
            pick = untried[len(study.get_trials(deepcopy=False)) % len(untried)]
            study.enqueue_trial(pick.as_dict())


_NUDGE_AFTER = 8
# A factory's own values cannot be listed to nudge the sampler: with its space exhausted it
# would only repeat itself, so the search stops after this many repeats in a row.
_GIVE_UP_AFTER = 64
