"""The search engine through its Python API, on a tiny model and a real SQLite storage."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

import bln_search
from bln_search import SearchInterrupted, SearchObserver
from bln_search.config import FLAG_NAMES
from bln_search.errors import SearchFailed
from bln_search.trials import TrainingSetup, config_of, setup_of, work_status
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
    assert len(distinct_work(study)) == 3
    study = bln_search.search(
        models.build, data, study_name="tpe", storage=storage, epochs=1, sampler=sampler, n_trials=5
    )
    assert len(distinct_work(study)) == 5  # a repeated suggestion is answered, not counted


def distinct_work(study):
    from bln_search.trials import is_duplicate, is_repeat

    work = [t for t in study.trials if not (is_repeat(t) or is_duplicate(t))]
    assert len({config_of(t) for t in work}) == len(work)
    return work


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


def test_a_per_trial_training_that_ran_every_epoch_is_never_pruned(data, storage):
    """The per-trial median pruner pruned trials at their last epoch, fully trained, and the
    leaderboard then ranked them below worse complete ones."""
    pruner = optuna.pruners.ThresholdPruner(upper=0.0)  # would prune at every report
    study = bln_search.search(
        models.build,
        data,
        study_name="last-epoch",
        storage=storage,
        epochs=1,
        strategy="per-trial",
        pruner=pruner,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=2,
    )
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(len(t.intermediate_values) == 1 for t in study.trials)


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
    with pytest.raises(
        bln_search.BLNSearchError, match="metric: .val_loss. in the study, .val_accuracy. now"
    ):
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


def test_the_grid_queues_each_trial_with_its_flags_so_taking_it_writes_none(storage, monkeypatch):
    """Queued as Optuna's retry callback queues a trial: params set, no suggest writes left."""
    from bln_search.sources import GridSource
    from bln_search.trials import suggest_config

    study = optuna.create_study(storage=storage)
    GridSource([TrainingSetup(0, 8)]).prepare(study, created=True)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert {config_of(t) for t in waiting} == set(bln_search.all_configurations())
    assert all(t.params == config_of(t).as_dict() for t in waiting)
    writes = []
    monkeypatch.setattr(optuna.storages.RDBStorage, "_set_trial_param", lambda *a: writes.append(a))
    trial = study.ask()
    assert suggest_config(trial) == config_of(waiting[0]) and writes == []


def test_the_grid_hands_out_the_next_training_s_trials_and_skips_those_another_worker_took(
    storage,
):
    from bln_search.sources import GridSource

    study = optuna.create_study(storage=storage)
    source = GridSource([TrainingSetup(0, 8), TrainingSetup(0, 16)])
    source.prepare(study, created=True)
    assert source.next_training(study) == 16
    other = optuna.load_study(study_name=study.study_name, storage=storage)
    taken_by_other = other.ask()  # the first queued trial
    numbers = []
    while (trial := source.ask(study)) is not None:
        numbers.append(trial.number)
    assert numbers == list(range(1, 16))  # the rest of batch size 8's, in queue order
    assert {setup_of(t) for t in study.trials[:16]} == {TrainingSetup(0, 8)}
    assert taken_by_other.number == 0
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 16 and source.next_training(study) == 16  # batch size 16's next


def study_names(storage):
    return [s.study_name for s in optuna.get_all_study_summaries(storage, False)]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"metric": "accuracy"}, "UsageError", "'accuracy' is a training metric"),
        ({"metric": "val_acuracy"}, "MetricNotReported", "not one the model reports (available:"),
        ({"data_fn": "data_bad_labels"}, "DataError", "class indices 0..1 for the model's 2"),
        ({"data_fn": "data_negative_labels"}, "DataError", "found -1"),
        ({"factory": "build_subclassed", "baselines": True}, "UserCodeError", "cannot be cloned"),
        ({"data_fn": "data_batched_dataset", "batch_size": [4, 64]}, "UsageError", "batched at 16"),
    ],
)
def test_bad_runs_are_refused_before_the_study_exists(storage, kwargs, error, words):
    kwargs = dict(kwargs)
    factory = getattr(models, kwargs.pop("factory", "build"))
    data = bln_search.check_data(getattr(models, kwargs.pop("data_fn", "load_data"))())
    with pytest.raises(bln_search.BLNSearchError, match=words.replace("(", r"\(")) as raised:
        bln_search.search(factory, data, study_name="s", storage=storage, epochs=1, **kwargs)
    assert type(raised.value).__name__ == error
    assert "s" not in study_names(storage)


def test_baselines_replace_bln_inside_nested_models():
    import keras

    from bln_search.baselines import replace_bln

    model = models.build_nested()
    for name in ("batch_norm", "layer_norm", "no_norm"):
        clone = replace_bln(model, name)
        assert bln_search.find_bln_layers(clone) == []
    kinds = {type(layer) for layer in replace_bln(model, "batch_norm")._flatten_layers()}
    assert keras.layers.BatchNormalization in kinds


def test_a_batched_dataset_trains_and_is_shown_at_its_real_batch_size(storage):
    data = bln_search.check_data(models.data_batched_dataset())
    study = bln_search.search(
        models.build,
        data,
        study_name="ds",
        storage=storage,
        epochs=1,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=1,
    )
    assert study.user_attrs["batch_size"] == 16
    assert study.user_attrs["bln_search_manifest"]["batch_sizes"] == [16]
    assert study.trials[0].user_attrs["batch_size"] == 16
    assert list(bln_search.leaderboard(study)["batch_size"]) == [16]
    assert bln_search.export_document(study)["training"]["batch_size"] == 16


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_samplers_train_distinct_configurations_only(data, storage, sampler):
    from bln_search.sampling import make_sampler
    from bln_search.trials import is_repeat

    trained = []

    class Count(SearchObserver):
        def on_trial_start(self, number, config):
            trained.append(config)

    for budget in (5, 8):  # a resume, as after an interrupted run
        study = bln_search.search(
            models.build,
            data,
            study_name=sampler,
            storage=storage,
            epochs=1,
            strategy="per-trial",
            sampler=make_sampler(sampler, 0),
            n_trials=budget,
            observer=Count(),
        )
    fresh = [t for t in study.trials if t.state.is_finished() and not is_repeat(t)]
    assert len({config_of(t) for t in fresh}) == len(fresh) == 8
    repeats = [t for t in study.trials if is_repeat(t)]
    assert all(t.value == study.trials[t.user_attrs["repeat_of"]].value for t in repeats)


def test_the_leaderboard_works_while_the_first_training_runs(data, storage):
    seen = {}

    class Peek(SearchObserver):
        def on_epoch_end(self, number, epoch, epochs, value):
            if epoch == 1 and not seen:
                study = optuna.load_study(study_name="live", storage=storage)
                board = bln_search.leaderboard(study)
                seen["states"] = set(board["state"])
                seen["values"] = board["val_loss"].notna().sum()
                with pytest.raises(SearchFailed, match="no complete trial yet"):
                    bln_search.export_document(study)

    study = bln_search.search(
        models.build, data, study_name="live", storage=storage, epochs=2, observer=Peek()
    )
    assert seen["states"] == {"running"} and seen["values"] >= 1
    board = bln_search.leaderboard(study)
    assert "val_accuracy" in board.columns and board["val_accuracy"].between(0, 1).all()


def test_a_trial_factory_s_own_values_make_separate_leaderboard_rows(data, storage):
    def run(n_trials):
        return bln_search.search(
            models.build_with_trial,
            data,
            study_name="own",
            storage=storage,
            epochs=1,
            sampler=optuna.samplers.RandomSampler(0),
            n_trials=n_trials,
        )

    study = run(1)
    flags = bln_search.StatisticsConfig(True, True, False, False).as_dict()
    for rate in (0.01, 0.05):
        study.enqueue_trial({**flags, "learning_rate": rate})
    study = run(3)
    board = bln_search.leaderboard(study)
    same = board[(board[list(flags)] == pd.Series(flags)).all(axis=1)]
    assert {"learning_rate=0.01", "learning_rate=0.05"} <= set(same["params"])
    document = bln_search.export_document(study)
    winner = study.trials[document["trial"]]
    assert document["params"] == {"learning_rate": winner.params["learning_rate"]}


class _OneConfiguration(optuna.samplers.BaseSampler):
    """A real Optuna sampler that proposes the same configuration for ever."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["per-trial", "shared"])
def test_a_sampler_that_repeats_itself_still_finishes_its_budget(data, storage, strategy):
    """The shared strategy stopped after a round of asks that were all repeats (seen in CI as
    a TPE budget of 5 ending at 3 or 4 distinct trials on a resume)."""
    study = bln_search.search(
        models.build,
        data,
        study_name="stuck",
        storage=storage,
        epochs=1,
        strategy=strategy,
        sampler=_OneConfiguration(),
        n_trials=3,
    )
    assert len(distinct_work(study)) == 3


def _one_learning_rate(trial):
    return models._model(learning_rate=trial.suggest_categorical("learning_rate", [0.01]))


@pytest.mark.timeout(300)
def test_a_factory_whose_own_space_is_exhausted_stops_with_a_warning(data, storage, monkeypatch):
    """Its own values cannot be listed to nudge the sampler, which then repeats for ever."""
    from bln_search import sources

    monkeypatch.setattr(sources, "_GIVE_UP_AFTER", 8)  # 64 model builds took a minute
    with pytest.warns(UserWarning, match="only work the study already has, 8 times in a row"):
        study = bln_search.search(
            _one_learning_rate,
            data,
            study_name="exhausted",
            storage=storage,
            epochs=1,
            sampler=_OneConfiguration(),
            n_trials=3,
        )
    assert len(distinct_work(study)) == 1


def test_own_values_that_round_alike_are_still_separate_rows_and_exported_per_batch_size():
    """Rows were keyed by the shown text (4 digits), so a second `lr` could hide behind the first."""
    from tests.helpers import synthetic_study

    study = synthetic_study({})
    flags = bln_search.StatisticsConfig(True, True, False, False)
    distributions = {
        **{n: optuna.distributions.CategoricalDistribution([False, True]) for n in flags.as_dict()},
        "lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
    }
    for value, lr, batch_size in ((0.5, 0.012341, 16), (0.4, 0.012344, 16), (0.3, 0.2, 32)):
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={**flags.as_dict(), "lr": lr},
                distributions=distributions,
                user_attrs={"seed": 0, "batch_size": batch_size, "best_epoch": 2},
            )
        )
    board = bln_search.leaderboard(study)
    assert list(board["batch_size"]) == [16, 16, 32]
    assert list(board["val_loss"]) == [0.4, 0.5, 0.3]
    # CSV and JSON carry the exact values (the `params` text rounds them for people).
    from bln_search.formats import rich_table, to_text

    assert [row["params.lr"] for row in json.loads(to_text(board, "json"))] == [
        0.012344,
        0.012341,
        0.2,
    ]
    assert "0.012341" in to_text(board, "csv") and "0.012344" in to_text(board, "csv")
    assert "params.lr" not in [column.header for column in rich_table(board).columns]
    document = bln_search.export_document(study)
    assert document["params"] == {"lr": 0.012344}
    assert document["by_batch_size"]["16"]["params"] == {"lr": 0.012344}
    assert document["by_batch_size"]["32"]["params"] == {"lr": 0.2}
    assert document["by_batch_size"]["32"]["best_epoch"] == 2
