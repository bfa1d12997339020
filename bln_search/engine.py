"""The search engine: train a model factory under BLN statistics configurations through Optuna.

Plain Python, no Typer or rich: the CLI wraps `search`, a notebook can call it
directly::

    import bln_search
    study = bln_search.search(build, data, study_name="digits", epochs=3)
    print(bln_search.leaderboard(study))
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from bln_search.baselines import BASELINES, BLN
from bln_search.config import FLAG_NAMES, StatisticsConfig, all_configurations
from bln_search.errors import BLNSearchError, SearchFailed, StorageError, UserCodeError, first_line, training_failed
from bln_search.interrupts import check as check_interrupt
from bln_search.loading import Data, build_model, check_data_fits_model, takes_trial
from bln_search.storage import open_storage
from bln_search.strategies import (  # noqa: F401  (re-exported: the attribute names are part of the engine's API)
    ATTR_BASELINE,
    ATTR_BATCH_SIZE,
    ATTR_BEST_EPOCH,
    ATTR_EPOCHS_TRAINED,
    ATTR_FAIL_MESSAGE,
    ATTR_FAIL_REASON,
    ATTR_FIT_SECONDS,
    ATTR_HISTORY,
    ATTR_SEED,
    ATTR_STRATEGY,
    ATTR_WORKER,
    WORKER,
    Curve,
    Job,
    PerTrialStrategy,
    SearchObserver,
    SharedStrategy,
    TrainingSettings,
    TrialFailed,
    Unit,
    heartbeat_interval,
)

ATTR_QUEUED = "queued_config"  # set on queued grid trials, so their configuration is known while they wait

# Failures that would happen again on a re-run, so the configuration counts as done.
FINAL_FAILURES = frozenset({"non_finite_loss", "duplicate"})

STRATEGIES = ("auto", "shared", "per-trial")

_GRID_READY = "grid_ready"

_MINIMIZE_HINTS = ("loss", "error", "mse", "mae", "mape", "crossentropy", "hinge", "divergence", "kld")
_MAXIMIZE_HINTS = ("acc", "auc", "precision", "recall", "f1", "iou", "r2")


def infer_direction(metric: str) -> str:
    """`"minimize"` for loss/error-like metric names, `"maximize"` for accuracy-like ones."""
    name = metric.lower().removeprefix("val_")
    if any(hint in name for hint in _MINIMIZE_HINTS):
        return "minimize"
    if any(hint in name for hint in _MAXIMIZE_HINTS):
        return "maximize"
    raise BLNSearchError(f"cannot tell whether {metric!r} should be minimized or maximized: pass a direction")


class SearchInterrupted(BLNSearchError):
    """Ctrl-C stopped the search; every finished trial is stored and a re-run resumes."""

    exit_code = 130


def config_of(trial: optuna.trial.FrozenTrial) -> StatisticsConfig | None:
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


def unit_of(trial) -> Unit | None:
    """The seed, batch size and model variant a trial trains with (stored when it is queued or started)."""
    attrs = trial.user_attrs
    if ATTR_SEED in attrs and ATTR_BATCH_SIZE in attrs:
        return Unit(int(attrs[ATTR_SEED]), int(attrs[ATTR_BATCH_SIZE]), attrs.get(ATTR_BASELINE, BLN))
    return None


def work_of(unit: Unit) -> list[StatisticsConfig | None]:
    """What a unit's training evaluates: the 16 configurations, or `[None]` for a baseline."""
    return [None] if unit.is_baseline else all_configurations()


def _suggest_config(trial: optuna.Trial) -> StatisticsConfig:
    """The trial's flags: queued ones for the grid, the sampler's otherwise (boolean params named like the flags)."""
    return StatisticsConfig(*(trial.suggest_categorical(name, [False, True]) for name in FLAG_NAMES))


def _is_done(trial: optuna.trial.FrozenTrial) -> bool:
    if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(ATTR_FAIL_REASON) in FINAL_FAILURES


def grid_status(study: optuna.Study) -> tuple[set, set, int]:
    """(work done, work waiting or running, number running); work is a (configuration, unit) pair."""
    done, pending, running = set(), set(), 0
    for trial in study.get_trials(deepcopy=False):
        config, unit = config_of(trial), unit_of(trial)
        if config is None and (unit is None or not unit.is_baseline):
            continue
        key = (config, unit)
        if _is_done(trial):
            done.add(key)
        elif trial.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING):
            pending.add(key)
            running += trial.state == optuna.trial.TrialState.RUNNING
    return done, pending, running


def _create_or_load_study(storage, study_name, settings, sampler, pruner, grid, units, extra_attrs):
    """Creates the study (and, for a grid, queues every configuration once per unit) or loads it."""
    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage, direction=settings.direction, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        _check_compatible(study, settings)
        for key in ("seeds", "batch_sizes", "baselines"):  # a resume may add seeds, batch sizes or baselines
            known = study.user_attrs.get(key)
            if isinstance(known, list) and not set(extra_attrs.get(key, [])) <= set(known):
                study.set_user_attr(key, sorted(set(known) | set(extra_attrs[key])))
        return study
    base = {
        "metric": settings.metric,
        "epochs": settings.epochs,
        "batch_size": units[0].batch_size,
        "seed": units[0].seed,
    }
    for key, value in {**base, **extra_attrs}.items():
        study.set_user_attr(key, value)
    if grid:
        for unit in units:
            for config in work_of(unit):
                _enqueue(study, config, unit)
        study.set_user_attr(_GRID_READY, True)
    return study


def _check_compatible(study: optuna.Study, settings: TrainingSettings) -> None:
    stored = study.user_attrs.get("metric")
    direction = study.direction.name.lower()
    if stored is not None and (stored != settings.metric or direction != settings.direction):
        raise StorageError(
            f"study {study.study_name!r} ranks by {stored} ({direction}); pass the same metric, "
            f"or a new --study name to search by {settings.metric} ({settings.direction})"
        )


def _enqueue(study: optuna.Study, config: StatisticsConfig | None, unit: Unit) -> None:
    attrs = {ATTR_SEED: unit.seed, ATTR_BATCH_SIZE: unit.batch_size}
    if unit.is_baseline:
        attrs[ATTR_BASELINE] = unit.variant
    else:
        attrs[ATTR_QUEUED] = config.as_dict()
    study.enqueue_trial(config.as_dict() if config else {}, user_attrs=attrs)


def _wait_for_grid(study: optuna.Study, timeout: float = 60.0) -> None:
    """A worker that loads a study its creator is still queueing waits for the queue."""
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get(_GRID_READY):
        if time.monotonic() > deadline:
            return  # the creator died while queueing: the caller's reconciliation queues the rest
        time.sleep(0.5)


def _requeue_missing(study: optuna.Study, units: list[Unit]) -> None:
    """Queues every (configuration, unit) that is neither done, waiting nor running."""
    done, pending, _ = grid_status(study)
    for unit in units:
        for config in work_of(unit):
            if (config, unit) not in done and (config, unit) not in pending:
                _enqueue(study, config, unit)


def preflight(model_factory: Callable[..., Any], data: Data, settings: TrainingSettings, unit: Unit):
    """Builds the model once and evaluates a batch, so bad input fails before the study is touched.

    Returns the model, built under `unit.seed` exactly as a training would
    build it, so the first shared training can start from it instead of
    building and compiling its evaluation again.
    """
    import keras

    keras.utils.set_random_seed(unit.seed)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(unit.seed)).ask() if takes_trial(model_factory) else None
    model = build_model(model_factory, trial)
    check_data_fits_model(data, model)
    try:
        if data.is_dataset:
            logs = model.evaluate(data.validation.take(1), verbose=0, return_dict=True)
        else:
            x, y = data.validation
            logs = model.evaluate(x[: unit.batch_size], y[: unit.batch_size], verbose=0, return_dict=True)
    except Exception as error:
        message = first_line(error) or type(error).__name__
        raise UserCodeError(f"the model cannot evaluate the validation data: {message}") from None
    names = {f"val_{name}" for name in logs} | set(logs)
    if settings.metric not in names:
        raise BLNSearchError(f"metric {settings.metric!r} is not one the model reports (available: {', '.join(sorted(names))})")
    return model


def choose_strategy(strategy: str, model_factory: Callable[..., Any]) -> str:
    """`auto` is `shared` unless the factory takes a `trial` (then training itself is searched)."""
    if strategy not in STRATEGIES:
        raise BLNSearchError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    searches_training = takes_trial(model_factory)
    if strategy == "shared" and searches_training:
        raise BLNSearchError(
            "the model factory takes a `trial` and so searches training hyper-parameters: "
            "one training cannot be shared across trials, use --strategy per-trial"
        )
    if strategy == "auto":
        return "per-trial" if searches_training else "shared"
    return strategy


def search(
    model_factory: Callable[..., Any],
    data: Data,
    *,
    study_name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    epochs: int = 5,
    batch_size: int | Sequence[int] = 32,
    metric: str = "val_loss",
    direction: str | None = None,
    seed: int = 0,
    seeds: int = 1,
    baselines: bool | Sequence[str] = False,
    sampler: optuna.samplers.BaseSampler | None = None,
    n_trials: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    strategy: str = "auto",
    configs_per_training: int | None = None,
    observer: SearchObserver | None = None,
    study_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Searches the 16 statistics configurations of the BLN layers in `model_factory()`'s model.

    Args:
        model_factory: Returns a compiled `keras.Model` with at least one
            `BatchLayerNormalization`. A factory with a `trial` parameter gets
            the Optuna trial, to suggest hyper-parameters of its own.
        data: `bln_search.loading.Data` (training and validation data).
        study_name: The Optuna study; an existing one is resumed.
        storage: An Optuna storage or database URL (default: `sqlite:///bln-search.db`).
        epochs: Training epochs; every epoch's `metric` is one intermediate value.
        batch_size: Training batch size (for arrays), or several: the grid then
            runs once per batch size.
        metric: A Keras log name, judged per epoch; a trial's value is its best epoch.
        direction: `"minimize"`/`"maximize"`; inferred from `metric` when omitted.
        seed, seeds: The grid runs every configuration under `seeds` seeds
            `seed, seed + 1, ...`; a seed fixes weights and data order alike, so
            configurations differ only in their flags.
        sampler: `None` for the grid: every configuration exactly once per seed
            and batch size, also across resumes and workers. Otherwise any Optuna
            sampler, with `n_trials`.
        n_trials: The study's total trial budget for a sampler (resumes run the rest).
        pruner: Any Optuna pruner, fed each epoch's `metric` (default: none).
        strategy: `"shared"` trains once per seed and batch size and evaluates
            every configuration after each epoch; `"per-trial"` trains each
            trial; `"auto"` picks shared unless the factory takes a `trial`.
        baselines: `True` for all of `bln_search.baselines.BASELINES` (the
            model with every BLN layer replaced by BatchNormalization,
            LayerNormalization, or nothing), or a list of their names; each is
            trained under every seed and batch size, and ranked alongside.
        configs_per_training: Shared strategy: at most this many configurations
            per training, so that several workers can split one grid.
        observer: Progress events (`SearchObserver`).
        study_attrs: Extra user attributes stored on a new study (e.g. the model spec).

    Returns:
        The `optuna.Study`. Raises `SearchInterrupted` on Ctrl-C, `SearchFailed`
        if every trial of this run failed.
    """
    grid = sampler is None
    if not grid and not n_trials:
        raise BLNSearchError("a sampler needs a trial budget (n_trials)")
    batch_sizes = [batch_size] if isinstance(batch_size, int) else list(dict.fromkeys(batch_size))
    if not batch_sizes or any(b < 1 for b in batch_sizes) or seeds < 1:
        raise BLNSearchError("batch sizes and the number of seeds must be at least 1")
    variants = [BLN, *(BASELINES if baselines is True else (baselines or []))]
    unknown = [v for v in variants[1:] if v not in BASELINES]
    if unknown:
        raise BLNSearchError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    units = [Unit(seed + i, b, v) for b in batch_sizes for i in range(seeds) for v in variants]
    if not grid and len(units) > 1:
        raise BLNSearchError("several seeds, batch sizes or baselines need the grid sampler (every configuration per seed and batch size)")
    strategy = choose_strategy(strategy, model_factory)
    if configs_per_training is not None and strategy != "shared":
        raise BLNSearchError("--configs-per-training only applies to the shared strategy: per-trial workers take one trial at a time")
    settings = TrainingSettings(epochs, metric, direction or infer_direction(metric))
    if not isinstance(storage, optuna.storages.BaseStorage):
        storage = open_storage(storage)
    checked_model = preflight(model_factory, data, settings, units[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Shared trainings ask and tell; their heartbeats are recorded by bln-search (strategies._Heartbeat).
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        study = _create_or_load_study(
            storage,
            study_name,
            settings,
            sampler or optuna.samplers.RandomSampler(seed=seed),
            pruner or optuna.pruners.NopPruner(),
            grid,
            units,
            {
                "sampler": "grid" if grid else type(sampler).__name__,
                "strategy": strategy,
                "seeds": sorted({u.seed for u in units}),
                "batch_sizes": batch_sizes,
                "baselines": variants[1:],
                **(study_attrs or {}),
            },
        )
        if grid:
            _wait_for_grid(study)
            _requeue_missing(study, units)
        run = _Run(study, storage, grid, n_trials, units, _Outcomes(observer or SearchObserver()))
        try:
            if strategy == "shared":
                run.shared(SharedStrategy(model_factory, data, settings, first_model=(units[0], checked_model)), configs_per_training)
            else:
                run.per_trial(PerTrialStrategy(model_factory, data, settings))
        except (KeyboardInterrupt, BLNSearchError) as error:
            if grid:  # the stopped trials are FAIL now: queue their configurations again for whoever runs next
                _requeue_missing(study, units)
            if isinstance(error, KeyboardInterrupt):
                raise SearchInterrupted("interrupted: finished trials are stored; run the same command again to resume") from None
            raise
        run.outcomes.check()
    return study


class _Outcomes(SearchObserver):
    """Forwards events to the user's observer and remembers how this run's trials ended."""

    def __init__(self, observer: SearchObserver):
        self.observer = observer
        self.ended: list[optuna.trial.FrozenTrial] = []

    def on_search_start(self, study, planned):
        self.observer.on_search_start(study, planned)

    def on_training_start(self, unit, configs):
        self.observer.on_training_start(unit, configs)

    def on_training_end(self, unit, epochs):
        self.observer.on_training_end(unit, epochs)

    def on_trial_start(self, number, config):
        self.observer.on_trial_start(number, config)

    def on_epoch_end(self, number, epoch, epochs, value):
        self.observer.on_epoch_end(number, epoch, epochs, value)

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        self.ended.append(trial)
        self.observer.on_trial_end(trial)

    def check(self) -> None:
        ran = [t for t in self.ended if t.user_attrs.get(ATTR_FAIL_REASON) != "duplicate"]
        if ran and all(t.state == optuna.trial.TrialState.FAIL for t in ran):
            reasons = {t.user_attrs.get(ATTR_FAIL_MESSAGE, "failed") for t in ran}
            raise SearchFailed(f"all {len(ran)} trials failed ({'; '.join(sorted(reasons))[:200]}); check the learning rate and the data")


class _NoWorkLeft(Exception):
    pass


class _Run:
    """The work loop of one worker: takes queued (or sampled) trials until none is left."""

    def __init__(self, study, storage, grid, n_trials, units, outcomes: _Outcomes):
        self.study, self.grid, self.n_trials, self.units, self.outcomes = study, grid, n_trials, units, outcomes
        self.poll = min(5.0, max(0.5, heartbeat_interval(storage) or 5.0))
        planned = sum(len(work_of(u)) for u in units) if grid else n_trials
        outcomes.on_search_start(study, planned)

    def _wait_for_others(self) -> bool:
        """True while other workers (or a dead one, until its heartbeat lapses) hold trials of the grid."""
        if grid_status(self.study)[2] == 0:
            return False
        time.sleep(self.poll)
        return True

    def _unit_of_new_trial(self, trial: optuna.Trial) -> Unit | None:
        """The unit of a trial just asked for: its queued one, the search's own for a sampled
        trial (stored on it), or None when a grid worker got a fresh trial because another
        worker took the last queued one between our look and our ask."""
        unit = unit_of(trial)
        if unit is None and not self.grid:
            unit = self.units[0]
            trial.set_user_attr(ATTR_SEED, unit.seed)
            trial.set_user_attr(ATTR_BATCH_SIZE, unit.batch_size)
        return unit

    def _budget_left(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        return self.n_trials - sum(_is_done(t) or t.state == optuna.trial.TrialState.RUNNING for t in trials)

    # -- per-trial ---------------------------------------------------------------------------

    def per_trial(self, strategy: PerTrialStrategy) -> None:
        study, grid = self.study, self.grid

        def attempt(trial: optuna.Trial) -> float:
            unit = self._unit_of_new_trial(trial)
            if unit is None:
                trial.set_user_attr(ATTR_FAIL_REASON, "duplicate")
                raise _NoWorkLeft("no queued configuration left")
            trial.set_user_attr(ATTR_STRATEGY, strategy.name)
            trial.set_user_attr(ATTR_WORKER, WORKER)
            config = None if unit.is_baseline else _suggest_config(trial)
            if grid and (config, unit) in grid_status(study)[0]:
                trial.set_user_attr(ATTR_FAIL_REASON, "duplicate")
                raise TrialFailed(f"{config.label if config else unit.variant} was already evaluated")
            self.outcomes.on_trial_start(trial.number, config)
            try:
                return strategy.run_trial(trial, config, unit, self.outcomes)
            except optuna.TrialPruned:
                raise
            except TrialFailed as error:
                trial.set_user_attr(ATTR_FAIL_REASON, error.reason)
                trial.set_user_attr(ATTR_FAIL_MESSAGE, str(error))
                raise
            except BLNSearchError as error:
                trial.set_user_attr(ATTR_FAIL_REASON, "error")
                trial.set_user_attr(ATTR_FAIL_MESSAGE, str(error))
                raise
            except Exception as error:
                wrapped = training_failed(error)
                trial.set_user_attr(ATTR_FAIL_REASON, "error")
                trial.set_user_attr(ATTR_FAIL_MESSAGE, str(wrapped))
                raise wrapped from error

        def objective(trial: optuna.Trial) -> float:
            try:
                return attempt(trial)
            except KeyboardInterrupt:  # wherever it lands, also before training starts
                trial.set_user_attr(ATTR_FAIL_REASON, "interrupted")
                raise

        def on_trial_end(study, frozen):
            self.outcomes.on_trial_end(frozen)

        while True:
            check_interrupt()
            optuna.storages.fail_stale_trials(study)
            if grid:
                if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
                    if self._wait_for_others():
                        continue
                    return
            elif self._budget_left() <= 0:
                return
            try:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[on_trial_end], gc_after_trial=False)
            except _NoWorkLeft:
                return

    # -- shared ------------------------------------------------------------------------------

    def shared(self, strategy: SharedStrategy, configs_per_training: int | None) -> None:
        taken: list[Job] = []
        try:
            while True:
                check_interrupt()
                optuna.storages.fail_stale_trials(self.study)
                groups = self._take(strategy.settings, configs_per_training, taken)
                if not groups:
                    if self.grid and self._wait_for_others():
                        continue
                    return
                for unit, jobs in groups.items():
                    strategy.run_unit(self.study, unit, jobs, self.outcomes)
        finally:  # trials taken but never started (an interrupt or error in an earlier group)
            for job in taken:
                if job.live:
                    job.live = False
                    job.trial.set_user_attr(ATTR_FAIL_REASON, "interrupted")
                    self.outcomes.on_trial_end(self.study.tell(job.trial, state=optuna.trial.TrialState.FAIL))

    def _take(self, settings: TrainingSettings, limit: int | None, taken: list[Job]) -> dict[Unit, list[Job]]:
        """Asks for the trials of the next training: the queued ones of the oldest waiting unit."""
        study = self.study
        if self.grid:
            waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            if not waiting:
                return {}
            first = unit_of(waiting[0])
            count = sum(unit_of(t) == first for t in waiting)
            done = grid_status(study)[0]
        else:
            count = self._budget_left()
            done = set()
        count = min(count, limit or count)
        groups: dict[Unit, list[Job]] = {}
        for _ in range(count):
            trial = study.ask()
            # Taken at once: an interrupt from here on finds the trial in `taken` and fails it.
            job = Job(trial, None, Curve(settings.direction))
            taken.append(job)
            self._beat(trial)
            unit = self._unit_of_new_trial(trial)
            if unit is None:
                job.live = False
                trial.set_user_attr(ATTR_FAIL_REASON, "duplicate")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            job.config = None if unit.is_baseline else _suggest_config(trial)
            if (job.config, unit) in done:
                job.live = False
                trial.set_user_attr(ATTR_FAIL_REASON, "duplicate")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            groups.setdefault(unit, []).append(job)
        return groups

    def _beat(self, trial: optuna.Trial) -> None:
        """A first heartbeat at once, so a worker killed before training still leaves a stale trial."""
        storage = self.study._storage
        if heartbeat_interval(storage):
            storage.record_heartbeat(trial._trial_id)
