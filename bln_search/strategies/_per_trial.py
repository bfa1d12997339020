"""One full training per trial: the general strategy, for any search space."""

from __future__ import annotations

import time

import optuna

from bln_search.checkpoints import TrainingCheckpoints, job_key
from bln_search.config import FLAG_NAMES
from bln_search.errors import TrialFailed, failure_of
from bln_search.interrupts import Deferral, interrupt_checker
from bln_search.interrupts import check as check_interrupt
from bln_search.observer import SearchObserver
from bln_search.sources import TrialSource
from bln_search.strategies._base import Strategy, batch_events, training_logs_value
from bln_search.trials import (
    ATTR_RESUMED,
    ATTR_STRATEGY,
    ATTR_TRAINING,
    ATTR_WORKER,
    DUPLICATE,
    FINAL_FAILURES,
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
        model = self._build(setup, trial)  # the factory suggests its own values here
        # Only now is the work known: a repeat checked before the build never matched a
        # factory's own values, so an exhausted space trained the same work for ever.
        earlier = source.repeat_of(study, trial)
        if earlier is not None:  # the sampler repeated itself: the stored result answers
            return answer_repeat(trial, earlier)
        return self._train(study, trial, config, setup, observer, model)

    def _train(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        config,
        setup: TrainingSetup,
        observer: SearchObserver,
        model,
    ) -> float:
        """Trains one trial's `model`, from its last checkpoint when an earlier try of the same
        work (flags, setup and the factory's own values) was killed or interrupted."""
        import keras

        from bln_search.layer_tools import ResetPopulationStatistics, configure, grouped_inference

        settings = self.settings
        writes = self._writes
        own = {k: v for k, v in trial.params.items() if k not in FLAG_NAMES}
        key = job_key(config, own)
        checkpoints = TrainingCheckpoints(self.artifacts, study, setup)
        trial.set_user_attr(ATTR_TRAINING, checkpoints.training)
        resumed = checkpoints.resume(model, [key], settings.direction)
        if checkpoints.model_damaged:  # half-loaded weights: epoch 1 starts from the seed's
            model = self._build(setup, trial)
        curve = resumed.curves[key] if resumed else Curve(settings.direction)
        initial_epoch = resumed.epoch if resumed else 0
        if resumed:
            trial.set_user_attr(ATTR_RESUMED, initial_epoch)
            for step, value in enumerate(curve.values):
                trial.report(value, step=step)
                observer.on_epoch_end(trial.number, step + 1, settings.epochs, value)

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == settings.epochs:  # training is done: hold signals until it is told
                    check_interrupt()
                    writes.hold()
                curve.values.append(training_logs_value(logs or {}, settings.metric, epoch))
                curve.add_others(logs or {}, settings.metric)
                observer.on_epoch_end(trial.number, epoch + 1, settings.epochs, curve.values[-1])
                # Before pruning or patience decide: a stopped training keeps its resume point.
                checkpoints.save(
                    model, epoch + 1, {key: curve}, ending=epoch + 1 == settings.epochs
                )

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
            callbacks.append(_patience(settings, curve))
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
                    initial_epoch=initial_epoch,
                    verbose=0,
                    callbacks=callbacks,
                )
        except BaseException as error:
            writes.hold()
            if _is_final(error):  # pruned, or a failure that would recur: nothing to resume
                checkpoints.finish()
            raise
        finally:
            writes.hold()
            curve.store(trial, time.perf_counter() - start)
        checkpoints.link(trial, curve)  # the best epoch's model stays, as the trial's artifact
        checkpoints.finish()
        return curve.best()


def _is_final(error: BaseException) -> bool:
    """Whether the trial ends for good (pruned, or a failure a re-run would meet again)."""
    if isinstance(error, optuna.TrialPruned):
        return True
    return failure_of(error)[0] in FINAL_FAILURES


def _patience(settings, curve: Curve):
    """Keras's EarlyStopping on the ranked metric, picking up where a resumed training was."""
    import keras

    class Patience(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if curve.values:  # a resumed training: the epochs already run count
                self.best = curve.best()
                self.best_epoch = curve.best_epoch() - 1
                self.wait = curve.epochs_since_best()

    return Patience(
        monitor=settings.metric,
        patience=settings.patience,
        mode="min" if settings.direction == "minimize" else "max",
    )


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
