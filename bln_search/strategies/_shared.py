"""Train once, evaluate sixteen: one training per setup, every configuration evaluated after each epoch."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

import optuna

from bln_search.checkpoints import TrainingCheckpoints, job_key
from bln_search.config import StatisticsConfig
from bln_search.errors import MetricNotReported, failure_of
from bln_search.evaluation import RepeatedEvaluation
from bln_search.heartbeats import TrialHeartbeats
from bln_search.interrupts import Deferral, deferred, interrupt_checker
from bln_search.interrupts import check as check_interrupt
from bln_search.observer import SearchObserver
from bln_search.sources import TrialSource
from bln_search.storage import set_trial_attrs
from bln_search.strategies._base import Strategy, batch_events, training_logs_value
from bln_search.trials import (
    ATTR_RESUMED,
    ATTR_STOPPED,
    ATTR_STRATEGY,
    ATTR_TRAINING,
    ATTR_WORKER,
    COMPLETE,
    DUPLICATE,
    FAIL,
    INTERRUPTED,
    NON_FINITE,
    PRUNED,
    WORKER,
    Curve,
    TrainingSetup,
    answer_repeat,
    failure_attrs,
    suggest_config,
    work_status,
)


@dataclass
class ConfigTrial:
    """One configuration's trial inside a shared training."""

    trial: optuna.Trial
    config: StatisticsConfig | None  # None for a baseline
    curve: Curve
    live: bool = True


class SharedStrategy(Strategy):
    """One training per (seed, batch size, model); every configuration is evaluated after each epoch.

    The four flags change nothing in training, only which statistics inference
    uses, so one training serves all 16. Each configuration is its own Optuna
    trial (ask and tell) with one intermediate value per epoch, so pruners, the
    leaderboard, export and the `optuna` CLI see ordinary trials. A pruned
    configuration stops being evaluated; training stops when none is left.

    What is done once instead of per configuration: building and training the
    model, batching the validation data (one cached `tf.data.Dataset`), and
    compiling the evaluation function (the flags are weights, so switching them
    retraces nothing).
    """

    name = "shared"
    takes_trial_factory = False
    default_pruner = "racing"
    help = "one training, every configuration evaluated after each epoch"

    def run(self, study, source, observer, limit=None) -> None:  # see Strategy.run
        taken: list[ConfigTrial] = []
        try:
            while True:
                self._tick(study)
                groups = self._take(study, source, limit, taken)
                if not groups:
                    if self._answered or self._idle(study, source):
                        continue  # answered repeats are no work: the budget may still have some
                    return
                for setup, jobs in groups.items():
                    self._train(study, setup, jobs, observer)
        finally:  # trials taken but never started (an interrupt or error in an earlier group)
            with deferred():
                for job in taken:
                    if job.live:
                        _tell(study, job, FAIL, observer, 0.0, reason=INTERRUPTED)

    def _take(
        self, study, source: TrialSource, limit: int | None, taken: list[ConfigTrial]
    ) -> dict[TrainingSetup, list[ConfigTrial]]:
        """Asks for the trials of the next training: the queued ones of the oldest waiting setup."""
        count = source.next_training(study)
        done = work_status(study)[0] if source.is_grid else set()
        count = min(count, limit or count)
        self._asked_at = time.monotonic()  # at or before each of these trials' first heartbeat
        self._answered = 0  # sampled repeats answered from stored results
        groups: dict[TrainingSetup, list[ConfigTrial]] = {}
        for _ in range(count):
            with deferred():  # taken at once: an interrupt from here on finds it in `taken`
                trial = source.ask(study)
                if trial is None:  # other workers took the rest
                    break
                job = ConfigTrial(trial, None, Curve(self.settings.direction))
                taken.append(job)
                TrialHeartbeats.beat_once(self.storage, trial)
            setup = source.setup_for(trial)
            if setup is None:
                _tell(study, job, FAIL, None, 0.0, reason=DUPLICATE)
                break
            job.config = None if setup.is_baseline else suggest_config(trial)
            if (job.config, setup) in done or any(
                other.config == job.config for other in groups.get(setup, [])
            ):
                _tell(study, job, FAIL, None, 0.0, reason=DUPLICATE)
                continue
            earlier = source.repeat_of(study, trial)
            if earlier is not None:  # the sampler repeated itself: the stored result answers
                _answer(study, job, earlier)
                self._answered += 1
                continue
            groups.setdefault(setup, []).append(job)
        return groups

    def _train(
        self,
        study: optuna.Study,
        setup: TrainingSetup,
        jobs: list[ConfigTrial],
        observer: SearchObserver,
    ) -> None:
        """Trains once and tells every job's trial its outcome; re-raises interrupts and user errors."""
        import keras

        from bln_search.layer_tools import ResetPopulationStatistics, configure, grouped_inference

        settings = self.settings
        start = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - start

        observer.on_training_start(setup, [job.config for job in jobs])
        training = uuid.uuid4().hex[:12]
        for job in jobs:
            set_trial_attrs(
                job.trial, {ATTR_STRATEGY: self.name, ATTR_WORKER: WORKER, ATTR_TRAINING: training}
            )
            observer.on_trial_start(job.trial.number, job.config)
        model = self._build(setup)
        # A killed or interrupted training of the same setup continues from its last epoch.
        checkpoints = TrainingCheckpoints(self.artifacts, study, setup, training)
        resumed = checkpoints.resume(
            model, [job_key(job.config) for job in jobs], settings.direction
        )
        if checkpoints.model_damaged:  # half-loaded weights: epoch 1 starts from the seed's
            model = self._build(setup)
        initial_epoch = 0
        if resumed is not None:
            initial_epoch = resumed.epoch
            for job in jobs:
                job.curve = resumed.curves[job_key(job.config)]
                job.trial.set_user_attr(ATTR_RESUMED, initial_epoch)
                for step, value in enumerate(job.curve.values):
                    job.trial.report(value, step=step)
                    observer.on_epoch_end(job.trial.number, step + 1, settings.epochs, value)
        # Few large evaluation steps, grouped like training batches: the same metrics.
        evaluation_batch = settings.evaluation_batch(model, self.data, setup.batch_size)
        validation = self.data.validation_dataset(evaluation_batch or setup.batch_size)
        evaluate = RepeatedEvaluation(model, validation)
        prune = not isinstance(study.pruner, optuna.pruners.NopPruner)
        # Preflight admits only validation metrics, so every value comes from an evaluation.
        metric = settings.metric.removeprefix("val_")
        epochs_run = [initial_epoch]
        # From the last epoch's evaluations until every trial is told, signals wait: a finished
        # training is stored complete, and the search stops after.
        writes = Deferral(held=False)

        def evaluate_all(epoch: int, logs: dict) -> None:
            epochs_run[0] = epoch + 1
            if epoch + 1 == settings.epochs:
                check_interrupt()
                writes.hold()
            if logs.get("loss") is not None:
                training_logs_value(logs, "loss", epoch)
            live = [job for job in jobs if job.live]
            observer.on_evaluation_start(epoch + 1, settings.epochs, len(live))
            for job in live:
                check_interrupt()
                if job.config is not None:
                    configure(model, job.config)
                results = evaluate()
                if metric not in results:
                    raise MetricNotReported(settings.metric, [f"val_{name}" for name in results])
                value = float(results[metric])
                if not math.isfinite(value):
                    message = f"{settings.metric} became {value} in epoch {epoch + 1}"
                    _tell(study, job, FAIL, observer, elapsed(), reason=NON_FINITE, message=message)
                    continue
                job.curve.values.append(value)
                job.curve.add_others({f"val_{k}": v for k, v in results.items()}, settings.metric)
                job.trial.report(value, step=epoch)
                observer.on_epoch_end(job.trial.number, epoch + 1, settings.epochs, value)
            # Prune only after every live configuration has reported this epoch.
            for job in live:
                if job.live and prune and job.trial.should_prune():
                    _tell(study, job, PRUNED, observer, elapsed())
            if not any(job.live for job in jobs):
                model.stop_training = True
            elif settings.patience and all(
                job.curve.epochs_since_best() >= settings.patience for job in jobs if job.live
            ):
                check_interrupt()
                writes.hold()  # the training ends here: its trials are told before a signal acts
                for job in jobs:
                    if job.live:
                        job.trial.set_user_attr(
                            ATTR_STOPPED,
                            f"no configuration improved for {settings.patience} epochs",
                        )
                model.stop_training = True
            checkpoints.save(
                model,
                epoch + 1,
                {job_key(job.config): job.curve for job in jobs if job.live},
                ending=epoch + 1 == settings.epochs or bool(model.stop_training),
            )

        class EvaluateEveryConfiguration(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                with grouped_inference(model, setup.batch_size if evaluation_batch else None):
                    evaluate_all(epoch, logs or {})

        callbacks = [
            ResetPopulationStatistics(),
            batch_events(observer, settings.epochs),
            EvaluateEveryConfiguration(),
            interrupt_checker(),
        ]
        with writes:
            try:
                with TrialHeartbeats(
                    self.storage,
                    [job.trial for job in jobs],
                    live=lambda: [j.trial for j in jobs if j.live],
                    beaten_at=self._asked_at,
                ):
                    model.fit(
                        **self.data.fit_kwargs(setup.batch_size, validation=False),
                        epochs=settings.epochs,
                        initial_epoch=initial_epoch,
                        verbose=0,
                        callbacks=callbacks,
                    )
            except BaseException as error:  # user code may raise more than `Exception`
                writes.hold()
                reason, message, raised = failure_of(error)
                _end_live(study, jobs, observer, elapsed(), reason=reason, message=message)
                if reason == NON_FINITE:  # would fail again: nothing to resume
                    checkpoints.finish()
                    return
                if raised is error:
                    raise
                raise raised from error
            writes.hold()  # every configuration pruned before the last epoch
            _end_live(study, jobs, observer, elapsed(), checkpoints=checkpoints)
            checkpoints.finish()
            observer.on_training_end(setup, epochs_run[0])


def _end_live(
    study,
    jobs: list[ConfigTrial],
    observer,
    seconds: float,
    reason=None,
    message=None,
    checkpoints: TrainingCheckpoints | None = None,
) -> None:
    """Completes every live job (each keeping its best epoch's model), or fails them all."""
    for job in jobs:
        if job.live:
            if reason is None:
                link = checkpoints.link_attrs(job.curve) if checkpoints is not None else None
                _tell(study, job, COMPLETE, observer, seconds, value=job.curve.best(), link=link)
            else:
                _tell(study, job, FAIL, observer, seconds, reason=reason, message=message)


def _answer(study, job: ConfigTrial, earlier) -> None:
    """Ends a sampled repeat with the earlier trial's stored result, without training."""
    job.live = False
    try:
        value, state = answer_repeat(job.trial, earlier), COMPLETE
    except optuna.TrialPruned:
        value, state = None, PRUNED
    study.tell(job.trial, state=state, values=value)


def _tell(
    study,
    job: ConfigTrial,
    state,
    observer,
    seconds: float,
    value=None,
    reason=None,
    message=None,
    link: tuple[dict, dict] | None = None,
) -> None:
    """Stores the job's curve (and `link`'s attributes: its kept model) and ends its trial, in
    two transactions (a signal meanwhile waits for the end)."""
    trial = job.trial
    user_attrs, system_attrs = link or ({}, {})
    with deferred():
        job.live = False
        user_attrs = {**job.curve.attrs(seconds), **user_attrs}
        if reason:
            user_attrs.update(failure_attrs(reason, message or ""))
        set_trial_attrs(trial, user_attrs, system_attrs)
        frozen = study.tell(trial, state=state, values=value if state == COMPLETE else None)
    if observer is not None:
        observer.on_trial_end(frozen)
