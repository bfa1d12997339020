"""One full training per trial: the general strategy, for any search space."""

from __future__ import annotations

import time

import optuna

from bln_search.errors import TrialFailed, failure_of
from bln_search.interrupts import Deferral, interrupt_checker
from bln_search.interrupts import check as check_interrupt
from bln_search.observer import SearchObserver
from bln_search.sources import TrialSource
from bln_search.strategies._base import Strategy, batch_events, training_logs_value
from bln_search.trials import (
    ATTR_STRATEGY,
    ATTR_WORKER,
    DUPLICATE,
    WORKER,
    Curve,
    TrainingSetup,
    answer_repeat,
    record_failure,
    suggest_config,
    work_status,
)


class _NoWorkLeft(Exception):
    """A grid worker asked for a trial after another worker took the last queued one."""


class PerTrialStrategy(Strategy):
    """Builds the model, sets the flags and fits with pruning, once per trial.

    Works for any search space (the factory may suggest hyper-parameters from
    the `trial` it receives), at the cost of one training per configuration.
    Trials run through `Study.optimize`, so Optuna records their heartbeats.
    """

    name = "per-trial"
    takes_trial_factory = True
    default_pruner = "median"
    help = "one training per trial"

    def run(self, study, source, observer, limit=None) -> None:  # see Strategy.run
        # Signals are held while Optuna creates a trial and from the end of its training until it
        # is told, so a trial is never left RUNNING nor a finished training stored as interrupted.
        writes = self._writes = Deferral(held=False)

        def objective(trial: optuna.Trial) -> float:
            try:
                writes.release()  # a signal held while the trial was created stops it here
                return self._attempt(study, source, trial, observer)
            except BaseException as error:  # user code may raise more than `Exception`
                writes.hold()
                if isinstance(error, (optuna.TrialPruned, _NoWorkLeft)):
                    raise
                reason, message, raised = failure_of(error)
                record_failure(trial, reason, message)
                if raised is error:
                    raise
                raise raised from error

        def on_trial_end(study, frozen):
            observer.on_trial_end(frozen)

        while True:
            self._tick(study)
            if source.available(study) <= 0:
                if self._idle(study, source):
                    continue
                return
            try:
                writes.hold()
                with writes:
                    study.optimize(
                        objective,
                        n_trials=1,
                        catch=(TrialFailed,),
                        callbacks=[on_trial_end],
                        gc_after_trial=False,
                    )
            except _NoWorkLeft:
                return

    def _attempt(
        self, study, source: TrialSource, trial: optuna.Trial, observer: SearchObserver
    ) -> float:
        setup = source.setup_for(trial)
        if setup is None:
            record_failure(trial, DUPLICATE)
            raise _NoWorkLeft("no queued configuration left")
        trial.set_user_attr(ATTR_STRATEGY, self.name)
        trial.set_user_attr(ATTR_WORKER, WORKER)
        config = None if setup.is_baseline else suggest_config(trial)
        if source.is_grid and (config, setup) in work_status(study)[0]:
            raise TrialFailed(
                f"{config.label if config else setup.variant} was already evaluated",
                reason=DUPLICATE,
            )
        observer.on_trial_start(trial.number, config)
        earlier = source.repeat_of(study, trial)
        if earlier is not None:  # the sampler repeated itself: the stored result answers
            return answer_repeat(trial, earlier)
        return self._train(trial, config, setup, observer)

    def _train(
        self, trial: optuna.Trial, config, setup: TrainingSetup, observer: SearchObserver
    ) -> float:
        import keras

        from bln_search.layer_tools import ResetPopulationStatistics, configure, grouped_inference

        settings = self.settings
        curve = Curve(settings.direction)
        writes = self._writes

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == settings.epochs:  # training is done: hold signals until it is told
                    check_interrupt()
                    writes.hold()
                curve.values.append(training_logs_value(logs or {}, settings.metric, epoch))
                curve.add_others(logs or {}, settings.metric)
                observer.on_epoch_end(trial.number, epoch + 1, settings.epochs, curve.values[-1])

        model = self._build(setup, trial)
        if config is not None:
            configure(model, config)
        callbacks = [
            ResetPopulationStatistics(),
            batch_events(observer, settings.epochs),
            Recorder(),
            _prune_before_the_last_epoch(trial, settings.metric, settings.epochs),
            interrupt_checker(),
        ]
        if settings.patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=settings.metric,
                    patience=settings.patience,
                    mode="min" if settings.direction == "minimize" else "max",
                )
            )
        # Validation in few large steps, grouped like training batches: the same metrics.
        evaluation_batch = settings.evaluation_batch(model, self.data, setup.batch_size)
        start = time.perf_counter()
        try:
            with grouped_inference(model, setup.batch_size if evaluation_batch else None):
                model.fit(
                    **self.data.fit_kwargs(
                        setup.batch_size, evaluation_batch_size=evaluation_batch
                    ),
                    epochs=settings.epochs,
                    verbose=0,
                    callbacks=callbacks,
                )
        finally:
            writes.hold()
            curve.store(trial, time.perf_counter() - start)
        return curve.best()


def _prune_before_the_last_epoch(trial, metric: str, epochs: int):
    """Optuna's Keras pruning callback, except at the last epoch: a trial that trained every
    epoch is complete, and pruning it there ranked it below worse complete trials."""
    from optuna_integration import KerasPruningCallback

    class PruneBeforeTheLastEpoch(KerasPruningCallback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 < epochs:
                super().on_epoch_end(epoch, logs)
                return
            value = (logs or {}).get(metric)
            if value is not None:
                trial.report(float(value), step=epoch)

    return PruneBeforeTheLastEpoch(trial, metric)
