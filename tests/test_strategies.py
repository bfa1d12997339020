"""The shared-training strategy against the per-trial one, and its pruning, resume and choice."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

import bln_search
from bln_search import SearchInterrupted, SearchObserver
from bln_search.config import all_configurations
from bln_search.errors import BLNSearchError
from bln_search.strategies import choose as choose_strategy
from bln_search.trials import TrainingSetup, config_of, is_duplicate, is_repeat
from bln_search.trials import setup_of as unit_of
from tests.fixtures import models

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED
FAIL = optuna.trial.TrialState.FAIL


def curves(study):
    """{configuration: [metric per epoch]} from the stored intermediate values."""
    return {
        config_of(t): [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        for t in study.get_trials(states=(COMPLETE,))
    }


class Events(SearchObserver):
    def __init__(self, interrupt_at=None):
        self.trainings, self.epochs, self.interrupt_at = [], [], interrupt_at
        self.training_epochs = []

    def on_training_end(self, unit, epochs):
        self.training_epochs.append(epochs)

    def on_training_start(self, unit, configs):
        self.trainings.append((unit, len(configs)))

    def on_epoch_end(self, number, epoch, epochs, value):
        self.epochs.append((number, epoch))
        if self.interrupt_at == (len(self.trainings), epoch):
            raise KeyboardInterrupt


def test_shared_and_per_trial_give_the_same_metrics_per_configuration_and_epoch(data, storage):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    kwargs = dict(storage=storage, epochs=3, batch_size=16, metric="val_loss", seed=3)
    shared = bln_search.search(models.build, data, study_name="shared", strategy="shared", **kwargs)
    per_trial = bln_search.search(
        models.build, data, study_name="per-trial", strategy="per-trial", **kwargs
    )
    assert {t.user_attrs["strategy"] for t in shared.trials} == {"shared"}
    assert {t.user_attrs["strategy"] for t in per_trial.trials} == {"per-trial"}
    shared_curves, per_trial_curves = curves(shared), curves(per_trial)
    assert set(shared_curves) == set(per_trial_curves) == set(all_configurations())
    for config, values in shared_curves.items():
        assert len(values) == 3
        np.testing.assert_allclose(
            values, per_trial_curves[config], rtol=1e-5, atol=1e-6, err_msg=config.label
        )
    # The flags matter at inference, so the 16 curves are not all the same.
    assert len({round(v[-1], 6) for v in shared_curves.values()}) > 4
    assert (
        bln_search.leaderboard(shared)["trial"].map(lambda n: config_of(shared.trials[n])).tolist()
        == bln_search.leaderboard(per_trial)["trial"]
        .map(lambda n: config_of(per_trial.trials[n]))
        .tolist()
    )


def test_shared_trains_once_and_stores_ordinary_trials(data, storage):
    events = Events()
    study = bln_search.search(
        models.build,
        data,
        study_name="s",
        storage=storage,
        epochs=2,
        batch_size=16,
        observer=events,
    )
    assert events.trainings == [(TrainingSetup(0, 16), 16)]
    assert len(study.trials) == 16 and all(t.state == COMPLETE for t in study.trials)
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [0, 1]
        assert trial.user_attrs["history"] == [
            trial.intermediate_values[0],
            trial.intermediate_values[1],
        ]
        assert trial.value == min(trial.user_attrs["history"])
        assert unit_of(trial) == TrainingSetup(0, 16)


def test_each_training_traces_its_training_and_evaluation_steps_once(data, storage, monkeypatch):
    """Adam's and the metrics' variables exist before the first trace: a trace that creates
    variables is traced again. Two seeds: the preflight's model, then one built for a training."""
    import keras
    import tensorflow as tf

    traced = []

    def counting(step):
        original = getattr(keras.Model, step)

        def counted(self, batch):
            if not tf.executing_eagerly():
                traced.append(step)
            return original(self, batch)

        return counted

    for step in ("train_step", "test_step"):
        monkeypatch.setattr(keras.Model, step, counting(step))
    study = bln_search.search(
        models.build_adam_dropout,
        data,
        study_name="s",
        storage=storage,
        epochs=1,
        batch_size=16,
        seeds=2,
    )
    assert sorted(traced) == ["test_step", "test_step", "train_step", "train_step"]
    assert len(study.trials) == 32 and all(t.state == COMPLETE for t in study.trials)


def test_a_pruned_configuration_stops_being_evaluated_and_training_stops_when_all_are(
    data, storage
):
    events = Events()
    pruner = optuna.pruners.ThresholdPruner(upper=0.0)  # prunes every trial at its first report
    study = bln_search.search(
        models.build,
        data,
        study_name="p",
        storage=storage,
        epochs=5,
        pruner=pruner,
        observer=events,
    )
    assert all(t.state == PRUNED and list(t.intermediate_values) == [0] for t in study.trials)
    assert {epoch for _, epoch in events.epochs} == {1}
    assert events.trainings and events.training_epochs == [1]  # fit stopped after the first epoch


class PruneConfigs(optuna.pruners.BasePruner):
    """Prunes the configurations whose batch-mean flag is set, after their second epoch."""

    def prune(self, study, trial):
        return trial.params.get("batch_moving_mean") and trial.last_step == 1


def test_pruning_some_configurations_leaves_the_others_to_finish(data, storage):
    study = bln_search.search(
        models.build, data, study_name="some", storage=storage, epochs=4, pruner=PruneConfigs()
    )
    pruned = [t for t in study.trials if t.state == PRUNED]
    complete = [t for t in study.trials if t.state == COMPLETE]
    assert len(pruned) == len(complete) == 8
    assert all(len(t.intermediate_values) == 2 for t in pruned)
    assert all(len(t.intermediate_values) == 4 for t in complete)


def test_an_interrupted_shared_training_restarts_and_keeps_finished_trainings(data, storage):
    with pytest.raises(SearchInterrupted):
        bln_search.search(
            models.build,
            data,
            study_name="r",
            storage=storage,
            epochs=3,
            seeds=2,
            observer=Events(interrupt_at=(2, 2)),
        )
    study = optuna.load_study(study_name="r", storage=storage)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    finished = {t.number: t.value for t in study.get_trials(states=(COMPLETE,))}
    assert len(finished) == 16 and {unit_of(study.trials[n]).seed for n in finished} == {0}
    interrupted = [t for t in study.trials if t.state == FAIL]
    assert len(interrupted) == 16 and all(
        t.user_attrs["fail_reason"] == "interrupted" for t in interrupted
    )

    events = Events()
    study = bln_search.search(
        models.build, data, study_name="r", storage=storage, epochs=3, seeds=2, observer=events
    )
    assert events.trainings == [
        (TrainingSetup(1, 32), 16)
    ]  # only the interrupted training runs again
    complete = study.get_trials(states=(COMPLETE,))
    assert len({(config_of(t), unit_of(t)) for t in complete}) == len(complete) == 32
    for number, value in finished.items():
        assert study.trials[number].value == value


def test_a_sampler_with_the_shared_strategy_spends_its_budget(data, storage):
    sampler = optuna.samplers.RandomSampler(seed=1)
    study = bln_search.search(
        models.build,
        data,
        study_name="tpe",
        storage=storage,
        epochs=1,
        sampler=sampler,
        n_trials=5,
        strategy="shared",
    )
    # The budget is distinct work: a configuration the sampler repeats is not trained twice.
    complete = study.get_trials(states=(COMPLETE,))
    assert len({config_of(t) for t in complete}) == len(complete) == 5
    assert all(is_duplicate(t) or is_repeat(t) for t in study.trials if t not in complete)


def test_strategy_choice_follows_the_factory():
    assert choose_strategy("auto", models.build).name == "shared"
    assert choose_strategy("auto", models.build_with_trial).name == "per-trial"
    assert choose_strategy("per-trial", models.build).name == "per-trial"
    # The Python API names its own parameter; the CLI shows the flag (tests/test_cli.py).
    with pytest.raises(BLNSearchError, match="set `strategy` to per-trial"):
        choose_strategy("shared", models.build_with_trial)


def test_a_factory_that_takes_a_trial_searches_its_own_hyper_parameters(data, storage):
    study = bln_search.search(
        models.build_with_trial,
        data,
        study_name="hp",
        storage=storage,
        epochs=1,
        sampler=optuna.samplers.RandomSampler(seed=0),
        n_trials=4,  # a grid of 16 trainings took a minute
    )
    assert len(study.trials) == 4 and all(t.state == COMPLETE for t in study.trials)
    assert all(
        "learning_rate" in t.params and t.user_attrs["strategy"] == "per-trial"
        for t in study.trials
    )
    assert len({t.params["learning_rate"] for t in study.trials}) == 4
