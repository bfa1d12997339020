"""The search engine: train a model factory under BLN statistics configurations through Optuna.

Plain Python, no Typer or rich: the CLI wraps `search`, a notebook can call it
directly::

    import bln_search
    study = bln_search.search(build, data, study_name="digits", epochs=3)
    print(bln_search.leaderboard(study))
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from bln_search.config import FLAG_NAMES, StatisticsConfig, all_configurations
from bln_search.errors import BLNSearchError, SearchFailed, StorageError, UserCodeError, first_line
from bln_search.loading import Data, build_model, check_data_fits_model
from bln_search.storage import load_existing_study, open_storage

# Trial user attributes this module writes (read back by `bln_search.results`).
ATTR_FAIL_REASON = "fail_reason"
ATTR_FAIL_MESSAGE = "fail_message"
ATTR_HISTORY = "history"
ATTR_BEST_EPOCH = "best_epoch"
ATTR_EPOCHS_TRAINED = "epochs_trained"
ATTR_FIT_SECONDS = "fit_seconds"
ATTR_QUEUED = "queued_config"  # set on queued grid trials, so their configuration is known while they wait

# Failures that would happen again on a re-run, so the configuration counts as done.
FINAL_FAILURES = frozenset({"non_finite_loss", "duplicate"})

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


class _TrialFailed(Exception):
    """A trial failed for a reason that must not stop the search (e.g. a NaN loss)."""


class SearchObserver:
    """Receives progress events; the CLI's live display is one. All methods are optional."""

    def on_search_start(self, study: optuna.Study, planned: int | None) -> None: ...

    def on_trial_start(self, number: int, config: StatisticsConfig) -> None: ...

    def on_epoch_end(self, number: int, epoch: int, epochs: int, value: float) -> None: ...

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None: ...


@dataclass(frozen=True)
class TrainingSettings:
    """How each trial trains and what it is judged on."""

    epochs: int = 5
    batch_size: int = 32
    metric: str = "val_loss"
    direction: str = "minimize"
    seed: int = 0


def config_of(trial: optuna.trial.FrozenTrial) -> StatisticsConfig | None:
    """The configuration a trial runs (or will run, while it waits in the queue)."""
    params = trial.params or trial.user_attrs.get(ATTR_QUEUED) or {}
    if all(name in params for name in FLAG_NAMES):
        return StatisticsConfig(*(bool(params[name]) for name in FLAG_NAMES))
    return None


def _is_done(trial: optuna.trial.FrozenTrial) -> bool:
    if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(ATTR_FAIL_REASON) in FINAL_FAILURES


def grid_status(study: optuna.Study) -> tuple[set[StatisticsConfig], set[StatisticsConfig], int]:
    """(configurations done, configurations waiting or running, number running)."""
    done, pending, running = set(), set(), 0
    for trial in study.get_trials(deepcopy=False):
        config = config_of(trial)
        if config is None:
            continue
        if _is_done(trial):
            done.add(config)
        elif trial.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING):
            pending.add(config)
            running += trial.state == optuna.trial.TrialState.RUNNING
    return done, pending, running


class _EpochRecorder:
    """Keras callback factory: collects each epoch's metric and fails the trial on NaN/inf loss."""

    def __new__(cls, trial, settings: TrainingSettings, observer: SearchObserver):
        import keras

        class EpochRecorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.history: list[float] = []

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                loss = logs.get("loss")
                if loss is not None and not math.isfinite(float(loss)):
                    raise _NonFiniteLoss(f"training loss became {float(loss)} in epoch {epoch + 1}")
                if settings.metric not in logs:
                    available = ", ".join(sorted(logs)) or "none"
                    raise BLNSearchError(f"metric {settings.metric!r} is not in the training logs (available: {available})")
                value = float(logs[settings.metric])
                if not math.isfinite(value):
                    raise _NonFiniteLoss(f"{settings.metric} became {value} in epoch {epoch + 1}")
                self.history.append(value)
                observer.on_epoch_end(trial.number, epoch + 1, settings.epochs, value)

            def store(self, fit_seconds: float) -> None:
                """Writes the trial's curve once, at its end (complete, pruned or failed)."""
                trial.set_user_attr(ATTR_FIT_SECONDS, fit_seconds)
                if self.history:
                    pick = min if settings.direction == "minimize" else max
                    best = pick(range(len(self.history)), key=self.history.__getitem__)
                    trial.set_user_attr(ATTR_HISTORY, self.history)
                    trial.set_user_attr(ATTR_BEST_EPOCH, best + 1)
                    trial.set_user_attr(ATTR_EPOCHS_TRAINED, len(self.history))

        return EpochRecorder()


class _NonFiniteLoss(_TrialFailed):
    pass


class PerTrialStrategy:
    """One full training per trial: builds the model, sets the flags, fits with pruning.

    The general strategy: it works for any search space, at the cost of one
    training per configuration.
    """

    def __init__(self, model_factory: Callable[[], Any], data: Data, settings: TrainingSettings):
        self.model_factory = model_factory
        self.data = data
        self.settings = settings

    def run_trial(self, trial: optuna.Trial, config: StatisticsConfig, observer: SearchObserver) -> float:
        import keras
        from optuna_integration import KerasPruningCallback

        from bln_search.layer import ResetPopulationStatistics, configure

        settings = self.settings
        # Without gc: a full collection per trial costs more than the fit of a small model.
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(settings.seed)
        model = build_model(self.model_factory)
        configure(model, config)
        recorder = _EpochRecorder(trial, settings, observer)
        callbacks = [ResetPopulationStatistics(), recorder, KerasPruningCallback(trial, settings.metric)]
        start = time.perf_counter()
        try:
            model.fit(**self.data.fit_kwargs(settings.batch_size), epochs=settings.epochs, verbose=0, callbacks=callbacks)
        finally:
            recorder.store(time.perf_counter() - start)
        pick = min if settings.direction == "minimize" else max
        return pick(recorder.history)


def _create_or_load_study(storage, study_name, settings, sampler, pruner, grid, extra_attrs):
    """Creates the study (and, for a grid, queues the 16 configurations once) or loads it."""
    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage, direction=settings.direction, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        _check_compatible(study, settings)
        return study
    base = {"metric": settings.metric, "epochs": settings.epochs, "batch_size": settings.batch_size, "seed": settings.seed}
    for key, value in {**base, **extra_attrs}.items():
        study.set_user_attr(key, value)
    if grid:
        for config in all_configurations():
            _enqueue(study, config)
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


def _enqueue(study: optuna.Study, config: StatisticsConfig) -> None:
    study.enqueue_trial(config.as_dict(), user_attrs={ATTR_QUEUED: config.as_dict()})


def _wait_for_grid(study: optuna.Study, timeout: float = 60.0) -> None:
    """A worker that loads a study its creator is still queueing waits for the queue."""
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get(_GRID_READY):
        if time.monotonic() > deadline:
            return  # the creator died while queueing: the caller's reconciliation queues the rest
        time.sleep(0.5)


def _requeue_missing(study: optuna.Study) -> None:
    """Queues every configuration that is neither done, waiting nor running."""
    done, pending, _ = grid_status(study)
    for config in all_configurations():
        if config not in done and config not in pending:
            _enqueue(study, config)


def preflight(model_factory: Callable[[], Any], data: Data, settings: TrainingSettings) -> None:
    """Builds the model once and evaluates a batch, so bad input fails before the study is touched."""
    import keras

    keras.utils.set_random_seed(settings.seed)
    model = build_model(model_factory)
    check_data_fits_model(data, model)
    try:
        if data.is_dataset:
            logs = model.evaluate(data.validation.take(1), verbose=0, return_dict=True)
        else:
            x, y = data.validation
            logs = model.evaluate(x[: settings.batch_size], y[: settings.batch_size], verbose=0, return_dict=True)
    except Exception as error:
        message = first_line(error) or type(error).__name__
        raise UserCodeError(f"the model cannot evaluate the validation data: {message}") from None
    names = {f"val_{name}" for name in logs} | set(logs)
    if settings.metric not in names:
        raise BLNSearchError(f"metric {settings.metric!r} is not one the model reports (available: {', '.join(sorted(names))})")
    keras.backend.clear_session()


def search(
    model_factory: Callable[[], Any],
    data: Data,
    *,
    study_name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    epochs: int = 5,
    batch_size: int = 32,
    metric: str = "val_loss",
    direction: str | None = None,
    seed: int = 0,
    sampler: optuna.samplers.BaseSampler | None = None,
    n_trials: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    observer: SearchObserver | None = None,
    study_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Searches the 16 statistics configurations of the BLN layers in `model_factory()`'s model.

    Args:
        model_factory: Returns a compiled `keras.Model` with at least one
            `BatchLayerNormalization`; called once per trial.
        data: `bln_search.loading.Data` (training and validation data).
        study_name: The Optuna study; an existing one is resumed.
        storage: An Optuna storage or database URL (default: `sqlite:///bln-search.db`).
        epochs, batch_size: Training of each trial. `batch_size` applies to arrays.
        metric: A Keras log name, judged per epoch; a trial's value is its best epoch.
        direction: `"minimize"`/`"maximize"`; inferred from `metric` when omitted.
        seed: Seeds every trial's weights and data order alike, so configurations
            differ only in their flags.
        sampler: `None` for the grid: every configuration exactly once, also
            across resumes and workers. Otherwise any Optuna sampler, with `n_trials`.
        n_trials: The study's total trial budget for a sampler (resumes run the rest).
        pruner: Any Optuna pruner, fed each epoch's `metric` (default: none).
        observer: Progress events (`SearchObserver`).
        study_attrs: Extra user attributes stored on a new study (e.g. the model spec).

    Returns:
        The `optuna.Study`. Raises `SearchInterrupted` on Ctrl-C, `SearchFailed`
        if every trial of this run failed.
    """
    grid = sampler is None
    if not grid and not n_trials:
        raise BLNSearchError("a sampler needs a trial budget (n_trials)")
    settings = TrainingSettings(epochs, batch_size, metric, direction or infer_direction(metric), seed)
    observer = observer or SearchObserver()
    if not isinstance(storage, optuna.storages.BaseStorage):
        storage = open_storage(storage)
    preflight(model_factory, data, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = _create_or_load_study(
            storage,
            study_name,
            settings,
            sampler or optuna.samplers.RandomSampler(seed=seed),
            pruner or optuna.pruners.NopPruner(),
            grid,
            {"sampler": "grid" if grid else type(sampler).__name__, **(study_attrs or {})},
        )
        if grid:
            _wait_for_grid(study)
            _requeue_missing(study)
        strategy = PerTrialStrategy(model_factory, data, settings)
        return _run(study, strategy, grid, n_trials, observer, storage)


def _planned(study: optuna.Study, grid: bool, n_trials: int | None) -> int:
    if grid:
        return len(all_configurations())
    return n_trials


def _run(study, strategy, grid, n_trials, observer, storage) -> optuna.Study:
    poll = min(5.0, max(0.5, getattr(storage, "heartbeat_interval", None) or 5.0))
    observer.on_search_start(study, _planned(study, grid, n_trials))
    outcomes = []

    def objective(trial: optuna.Trial) -> float:
        if grid and not trial.params and ATTR_QUEUED not in trial.user_attrs:
            # Another worker took the last queued configuration between our check and ask.
            trial.set_user_attr(ATTR_FAIL_REASON, "duplicate")
            raise _NoWorkLeft("no queued configuration left")
        config = StatisticsConfig(*(trial.suggest_categorical(name, [False, True]) for name in FLAG_NAMES))
        if grid and any(config_of(t) == config and _is_done(t) for t in study.get_trials(deepcopy=False)):
            trial.set_user_attr(ATTR_FAIL_REASON, "duplicate")
            raise _TrialFailed(f"configuration {config.label} was already evaluated")
        observer.on_trial_start(trial.number, config)
        try:
            return strategy.run_trial(trial, config, observer)
        except optuna.TrialPruned:
            raise
        except _TrialFailed as error:
            trial.set_user_attr(ATTR_FAIL_REASON, "non_finite_loss")
            trial.set_user_attr(ATTR_FAIL_MESSAGE, str(error))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(ATTR_FAIL_REASON, "interrupted")
            raise
        except BLNSearchError as error:
            trial.set_user_attr(ATTR_FAIL_REASON, "error")
            trial.set_user_attr(ATTR_FAIL_MESSAGE, str(error))
            raise
        except Exception as error:
            message = first_line(error)
            trial.set_user_attr(ATTR_FAIL_REASON, "error")
            trial.set_user_attr(ATTR_FAIL_MESSAGE, f"{type(error).__name__}: {message}")
            raise UserCodeError(f"training failed: {type(error).__name__}: {message}") from error

    def on_trial_end(study, frozen):
        outcomes.append(frozen)
        observer.on_trial_end(frozen)

    try:
        while True:
            optuna.storages.fail_stale_trials(study)
            if grid:
                waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
                if not waiting:
                    if grid_status(study)[2] == 0:
                        break
                    time.sleep(poll)  # other workers (or a dead one, until its heartbeat lapses) hold the rest
                    continue
            else:
                trials = study.get_trials(deepcopy=False)
                if sum(_is_done(t) or t.state == optuna.trial.TrialState.RUNNING for t in trials) >= n_trials:
                    break
            try:
                study.optimize(objective, n_trials=1, catch=(_TrialFailed,), callbacks=[on_trial_end], gc_after_trial=False)
            except _NoWorkLeft:
                break
    except (KeyboardInterrupt, BLNSearchError) as error:
        if grid:  # the stopped trial is FAIL now: queue its configuration again for whoever runs next
            _requeue_missing(study)
        if isinstance(error, KeyboardInterrupt):
            raise SearchInterrupted("interrupted: finished trials are stored; run the same command again to resume") from None
        raise
    ran = [t for t in outcomes if t.user_attrs.get(ATTR_FAIL_REASON) != "duplicate"]
    if ran and all(t.state == optuna.trial.TrialState.FAIL for t in ran):
        reasons = {t.user_attrs.get(ATTR_FAIL_MESSAGE, "failed") for t in ran}
        raise SearchFailed(f"all {len(ran)} trials failed ({'; '.join(sorted(reasons))[:200]}); check the learning rate and the data")
    return study


class _NoWorkLeft(Exception):
    pass
