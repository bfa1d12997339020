"""How configurations are trained: one training per trial, or one training shared by many.

The four flags change nothing in training, only which statistics inference
uses. So `SharedStrategy` trains one model per (seed, batch size) and, after
every epoch, switches the flags and evaluates each live configuration: a full
leaderboard for about the price of one training. `PerTrialStrategy` trains
every trial from scratch, for factories that search hyper-parameters of their
own (they take a `trial` argument).

Both record the same thing per trial: one intermediate value per epoch (step =
epoch index, as Optuna's Keras pruning callback reports it), the curve, the
best epoch, and the value of the best epoch.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from bln_search.baselines import BLN, replace_bln
from bln_search.config import StatisticsConfig
from bln_search.errors import BLNSearchError, training_failed
from bln_search.interrupts import check as check_interrupt
from bln_search.interrupts import interrupt_checker
from bln_search.loading import Data, build_model

# Trial user attributes written here (read back by `bln_search.results`).
ATTR_FAIL_REASON = "fail_reason"
ATTR_FAIL_MESSAGE = "fail_message"
ATTR_HISTORY = "history"
ATTR_BEST_EPOCH = "best_epoch"
ATTR_EPOCHS_TRAINED = "epochs_trained"
ATTR_FIT_SECONDS = "fit_seconds"
ATTR_SEED = "seed"
ATTR_BATCH_SIZE = "batch_size"
ATTR_STRATEGY = "strategy"
ATTR_WORKER = "worker"  # host:pid of the process that ran the trial
ATTR_TRAINING = "training"  # the shared training a trial was evaluated in
ATTR_BASELINE = "baseline"  # set on baseline trials: which normalization replaced BLN

WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Unit:
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


@dataclass(frozen=True)
class TrainingSettings:
    """How trials train and what they are judged on."""

    epochs: int = 5
    metric: str = "val_loss"
    direction: str = "minimize"


class TrialFailed(Exception):
    """A trial failed for a reason that must not stop the search (e.g. a NaN loss)."""

    reason = "non_finite_loss"


class SearchObserver:
    """Receives progress events; the CLI's live display is one. All methods are optional."""

    def on_search_start(self, study: optuna.Study, planned: int | None) -> None: ...

    def on_training_start(self, unit: Unit, configs: list[StatisticsConfig | None]) -> None:
        """A shared training starts, evaluating `configs` after every epoch (`[None]` for a baseline)."""

    def on_training_end(self, unit: Unit, epochs: int) -> None:
        """A shared training ended after `epochs` epochs (fewer when every configuration was pruned)."""

    def on_trial_start(self, number: int, config: StatisticsConfig | None) -> None:
        """A trial starts; `config` is None for a baseline."""

    def on_epoch_end(self, number: int, epoch: int, epochs: int, value: float) -> None: ...

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None: ...


def _pick(direction: str):
    return min if direction == "minimize" else max


def _check_finite(name: str, value: float, epoch: int) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise TrialFailed(f"{name} became {value} in epoch {epoch + 1}")
    return value


@dataclass
class Curve:
    """One trial's metric per epoch, written to the storage once at the trial's end."""

    direction: str
    values: list[float] = field(default_factory=list)

    def best(self) -> float:
        return _pick(self.direction)(self.values)

    def store(self, trial: optuna.Trial, fit_seconds: float) -> None:
        trial.set_user_attr(ATTR_FIT_SECONDS, round(fit_seconds, 3))
        if self.values:
            best = _pick(self.direction)(range(len(self.values)), key=self.values.__getitem__)
            trial.set_user_attr(ATTR_HISTORY, self.values)
            trial.set_user_attr(ATTR_BEST_EPOCH, best + 1)
            trial.set_user_attr(ATTR_EPOCHS_TRAINED, len(self.values))


def _training_logs_value(logs: dict, metric: str, epoch: int) -> float:
    loss = logs.get("loss")
    if loss is not None:
        _check_finite("training loss", loss, epoch)
    if metric not in logs:
        available = ", ".join(sorted(logs)) or "none"
        raise BLNSearchError(f"metric {metric!r} is not in the training logs (available: {available})")
    return _check_finite(metric, logs[metric], epoch)


class PerTrialStrategy:
    """One full training per trial: builds the model, sets the flags, fits with pruning.

    The general strategy: it works for any search space (the factory may
    suggest hyper-parameters from the `trial` it receives), at the cost of one
    training per configuration.
    """

    name = "per-trial"

    def __init__(self, model_factory: Callable[..., Any], data: Data, settings: TrainingSettings):
        self.model_factory = model_factory
        self.data = data
        self.settings = settings

    def run_trial(self, trial: optuna.Trial, config: StatisticsConfig | None, unit: Unit, observer: SearchObserver) -> float:
        import keras
        from optuna_integration import KerasPruningCallback

        from bln_search.layer import ResetPopulationStatistics, configure

        settings = self.settings
        curve = Curve(settings.direction)

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                curve.values.append(_training_logs_value(logs or {}, settings.metric, epoch))
                observer.on_epoch_end(trial.number, epoch + 1, settings.epochs, curve.values[-1])

        # Without gc: a full collection per trial costs more than the fit of a small model.
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(unit.seed)
        model = build_model(self.model_factory, trial)
        if unit.is_baseline:
            model = replace_bln(model, unit.variant)
        else:
            configure(model, config)
        callbacks = [ResetPopulationStatistics(), Recorder(), KerasPruningCallback(trial, settings.metric), interrupt_checker()]
        start = time.perf_counter()
        try:
            model.fit(**self.data.fit_kwargs(unit.batch_size), epochs=settings.epochs, verbose=0, callbacks=callbacks)
        finally:
            curve.store(trial, time.perf_counter() - start)
        return curve.best()


@dataclass
class Job:
    """One configuration's trial inside a shared training."""

    trial: optuna.Trial
    config: StatisticsConfig | None  # None for a baseline
    curve: Curve
    live: bool = True


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats if the storage records them (RDB storages opened by bln-search do)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


class _Heartbeat:
    """Records a heartbeat for every live trial of a shared training.

    `Study.optimize` runs one heartbeat thread per trial; the ask-and-tell trials
    of a shared training need this instead, so that a killed worker's trials
    become stale and are retried like any other.
    """

    def __init__(self, storage, jobs: list[Job]):
        self.interval = heartbeat_interval(storage)
        self.storage, self.jobs = storage, jobs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="bln-search-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            for job in list(self.jobs):
                if job.live:
                    self.storage.record_heartbeat(job.trial._trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.interval:
            self.stop.set()
            self.thread.join()


class SharedStrategy:
    """One training per (seed, batch size); every configuration is evaluated after each epoch.

    Each configuration is its own Optuna trial (ask and tell) with one
    intermediate value per epoch, so pruners, the leaderboard, export and the
    `optuna` CLI see ordinary trials. A pruned configuration stops being
    evaluated; training stops when none is left.

    What is done once instead of per configuration: building and training the
    model, batching the validation data (one cached `tf.data.Dataset`), and
    compiling the evaluation function (the flags are weights, so switching them
    retraces nothing).
    """

    name = "shared"

    def __init__(self, model_factory: Callable[..., Any], data: Data, settings: TrainingSettings, first_model=None):
        self.model_factory = model_factory
        self.data = data
        self.settings = settings
        # (unit, model): a model the preflight check already built under that unit's seed.
        self._ready = first_model

    def _model_for(self, unit: Unit):
        import keras

        if self._ready is not None and self._ready[0] == unit:
            model, self._ready = self._ready[1], None
            return model
        self._ready = None
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(unit.seed)
        model = build_model(self.model_factory)
        return replace_bln(model, unit.variant) if unit.is_baseline else model

    def run_unit(self, study: optuna.Study, unit: Unit, jobs: list[Job], observer: SearchObserver) -> None:
        """Trains once and tells every job's trial its outcome; re-raises interrupts and user errors."""
        import keras

        from bln_search.layer import ResetPopulationStatistics, configure

        settings = self.settings
        start = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - start

        observer.on_training_start(unit, [job.config for job in jobs])
        training = uuid.uuid4().hex[:12]
        for job in jobs:
            job.trial.set_user_attr(ATTR_STRATEGY, self.name)
            job.trial.set_user_attr(ATTR_WORKER, WORKER)
            job.trial.set_user_attr(ATTR_TRAINING, training)
            observer.on_trial_start(job.trial.number, job.config)
        model = self._model_for(unit)
        validation = self.data.validation_dataset(unit.batch_size)
        prune = not isinstance(study.pruner, optuna.pruners.NopPruner)
        evaluated = settings.metric.startswith("val_")
        metric = settings.metric.removeprefix("val_")

        epochs_run = [0]

        def evaluate_all(epoch: int, logs: dict) -> None:
            epochs_run[0] = epoch + 1
            if evaluated:
                if logs.get("loss") is not None:
                    _check_finite("training loss", logs["loss"], epoch)
            else:  # a training metric is the same for every configuration
                shared_value = _training_logs_value(logs, settings.metric, epoch)
            live = [job for job in jobs if job.live]
            for job in live:
                check_interrupt()
                if evaluated:
                    if job.config is not None:
                        configure(model, job.config)
                    results = model.evaluate(validation, verbose=0, return_dict=True)
                    if metric not in results:
                        available = ", ".join(f"val_{name}" for name in sorted(results))
                        raise BLNSearchError(f"metric {settings.metric!r} is not one the model reports (available: {available})")
                    value = float(results[metric])
                else:
                    value = shared_value
                if not math.isfinite(value):
                    message = f"{settings.metric} became {value} in epoch {epoch + 1}"
                    _tell(study, job, optuna.trial.TrialState.FAIL, observer, elapsed(), reason="non_finite_loss", message=message)
                    continue
                job.curve.values.append(value)
                job.trial.report(value, step=epoch)
                observer.on_epoch_end(job.trial.number, epoch + 1, settings.epochs, value)
            # Prune only after every live configuration has reported this epoch.
            for job in live:
                if job.live and prune and job.trial.should_prune():
                    _tell(study, job, optuna.trial.TrialState.PRUNED, observer, elapsed())
            if not any(job.live for job in jobs):
                model.stop_training = True

        class EvaluateEveryConfiguration(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                evaluate_all(epoch, logs or {})

        callbacks = [ResetPopulationStatistics(), EvaluateEveryConfiguration(), interrupt_checker()]
        try:
            with _Heartbeat(study._storage, jobs):
                model.fit(**self.data.fit_kwargs(unit.batch_size, validation=False), epochs=settings.epochs, verbose=0, callbacks=callbacks)
        except TrialFailed as error:
            self._end_live(study, jobs, observer, elapsed(), reason="non_finite_loss", message=str(error))
            return
        except KeyboardInterrupt:
            self._end_live(study, jobs, observer, elapsed(), reason="interrupted")
            raise
        except BLNSearchError as error:
            self._end_live(study, jobs, observer, elapsed(), reason="error", message=str(error))
            raise
        except Exception as error:
            wrapped = training_failed(error)
            self._end_live(study, jobs, observer, elapsed(), reason="error", message=str(wrapped))
            raise wrapped from error
        self._end_live(study, jobs, observer, elapsed())
        observer.on_training_end(unit, epochs_run[0])

    @staticmethod
    def _end_live(study, jobs, observer, seconds, reason=None, message=None) -> None:
        """Completes every live job, or fails them all with `reason`."""
        for job in jobs:
            if job.live:
                if reason is None:
                    _tell(study, job, optuna.trial.TrialState.COMPLETE, observer, seconds, value=job.curve.best())
                else:
                    _tell(study, job, optuna.trial.TrialState.FAIL, observer, seconds, reason=reason, message=message)


def _tell(study, job: Job, state, observer, seconds: float, value=None, reason=None, message=None) -> None:
    """Stores the job's curve and ends its trial."""
    trial = job.trial
    job.live = False
    job.curve.store(trial, seconds)
    if reason:
        trial.set_user_attr(ATTR_FAIL_REASON, reason)
    if message:
        trial.set_user_attr(ATTR_FAIL_MESSAGE, message)
    frozen = study.tell(trial, state=state, values=value if state == optuna.trial.TrialState.COMPLETE else None)
    observer.on_trial_end(frozen)
