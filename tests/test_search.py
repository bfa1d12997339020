"""The search engine through its Python API, on a tiny model and a real SQLite storage."""

from __future__ import annotations

import optuna
import pytest

import bln_search
from bln_search import SearchInterrupted, SearchObserver
from bln_search.config import FLAG_NAMES
from bln_search.errors import SearchFailed
from bln_search.trials import TrainingSetup, config_of, work_status
from tests.fixtures import models


def complete_configs(study):
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [config_of(t) for t in trials]


def test_grid_runs_each_configuration_once_with_boolean_params(data, storage):
    study = bln_search.search(
        models.build, data, study_name="grid", storage=storage, epochs=2, batch_size=16
    )
    configs = complete_configs(study)
    assert len(configs) == len(set(configs)) == 16
    for trial in study.trials:
        assert set(trial.params) == set(FLAG_NAMES)
        assert all(isinstance(v, bool) for v in trial.params.values())
        assert trial.user_attrs["epochs_trained"] == 2 and len(trial.user_attrs["history"]) == 2
        assert trial.value == min(trial.user_attrs["history"])
    board = bln_search.leaderboard(study)
    assert len(board) == 16 and list(board["rank"]) == list(range(1, 17))
    assert board["val_loss"].is_monotonic_increasing
    document = bln_search.export_document(study)
    assert document["trial"] == study.best_trial.number
    assert document["config"] == study.best_trial.params
    # Re-running a finished grid study runs nothing.
    again = bln_search.search(
        models.build, data, study_name="grid", storage=storage, epochs=2, batch_size=16
    )
    assert len(again.trials) == 16


class InterruptAfter(SearchObserver):
    """Simulates Ctrl-C in the middle of trial number `k` (after its first epoch)."""

    def __init__(self, k):
        self.k = k

    def on_epoch_end(self, number, epoch, epochs, value):
        if number == self.k:
            raise KeyboardInterrupt


def test_interrupted_grid_resumes_to_exactly_sixteen_distinct_configurations(data, storage):
    with pytest.raises(SearchInterrupted):
        bln_search.search(
            models.build,
            data,
            study_name="resume",
            storage=storage,
            epochs=2,
            strategy="per-trial",
            observer=InterruptAfter(5),
        )
    study = optuna.load_study(study_name="resume", storage=storage)
    assert len(complete_configs(study)) == 5
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["fail_reason"] == "interrupted"
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    finished_before = {
        t.number: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
    }

    study = bln_search.search(
        models.build, data, study_name="resume", storage=storage, epochs=2, strategy="per-trial"
    )
    configs = complete_configs(study)
    assert len(configs) == len(set(configs)) == 16
    assert config_of(interrupted[0]) in configs  # the interrupted configuration was run again
    for number, value in finished_before.items():  # nothing finished was lost or redone
        assert study.trials[number].value == value
    assert len(bln_search.leaderboard(study)) == 16


def test_nan_loss_fails_every_trial_with_its_reason_and_the_search_goes_on(data, storage):
    with pytest.raises(SearchFailed, match="all 16 trials failed"):
        bln_search.search(models.build_nan, data, study_name="nan", storage=storage, epochs=1)
    study = optuna.load_study(study_name="nan", storage=storage)
    assert len(study.trials) == 16
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    assert all(
        t.user_attrs["fail_reason"] == "non_finite_loss"
        and "nan" in t.user_attrs["fail_message"].lower()
        for t in study.trials
    )
    board = bln_search.leaderboard(study)
    assert set(board["state"]) == {"fail"} and board["rank"].isna().all()


def test_sampler_budget_is_for_the_whole_study(data, storage):
    sampler = optuna.samplers.TPESampler(seed=0)
    study = bln_search.search(
        models.build, data, study_name="tpe", storage=storage, epochs=1, sampler=sampler, n_trials=3
    )
    assert len(study.trials) == 3
    study = bln_search.search(
        models.build, data, study_name="tpe", storage=storage, epochs=1, sampler=sampler, n_trials=5
    )
    assert len(study.trials) == 5


def test_pruned_trials_rank_after_complete_ones(data, storage):
    pruner = optuna.pruners.ThresholdPruner(upper=0.0)  # prunes every trial after its first report
    study = bln_search.search(
        models.build,
        data,
        study_name="pruned",
        storage=storage,
        epochs=3,
        pruner=pruner,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=2,
    )
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    board = bln_search.leaderboard(study)
    assert set(board["state"]) == {"pruned"} and set(board["epochs"]) == {1}
    with pytest.raises(SearchFailed, match="no complete trial"):
        bln_search.export_document(study)


def test_changing_the_metric_of_an_existing_study_is_refused(data, storage):
    bln_search.search(
        models.build,
        data,
        study_name="m",
        storage=storage,
        epochs=1,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=1,
    )
    with pytest.raises(bln_search.BLNSearchError, match="ranks by val_loss"):
        bln_search.search(
            models.build,
            data,
            study_name="m",
            storage=storage,
            epochs=1,
            metric="val_accuracy",
            sampler=optuna.samplers.RandomSampler(0),
            n_trials=2,
        )


def test_a_queued_trial_keeps_its_configuration_while_its_flags_are_being_suggested(storage):
    """Another worker may read a trial between its four suggest calls: it must still count as taken."""
    study = optuna.create_study(storage=storage)
    config = bln_search.StatisticsConfig(True, False, True, False)
    study.enqueue_trial(
        config.as_dict(), user_attrs={"queued_config": config.as_dict(), "seed": 0, "batch_size": 8}
    )
    trial = study.ask()
    trial.suggest_categorical("batch_moving_mean", [False, True])  # one of four flags so far
    frozen = study.get_trials(deepcopy=False)[0]
    assert list(frozen.params) == ["batch_moving_mean"]
    assert config_of(frozen) == config
    done, pending, running = work_status(study)
    assert (config, TrainingSetup(0, 8)) in pending and running == 1
