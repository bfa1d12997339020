"""A study knows what it searched: its manifest, and the runs it refuses to mix in."""

from __future__ import annotations

import optuna
import pytest

import bln_search
from bln_search.errors import StorageError
from bln_search.manifest import STUDY_MANIFEST
from tests.fixtures import models


def random_search(data, storage, name="s", factory=models.build, **kwargs):
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("sampler", optuna.samplers.RandomSampler(0))
    kwargs.setdefault("n_trials", 1)
    return bln_search.search(factory, data, study_name=name, storage=storage, **kwargs)


def snapshot(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    return (
        study.user_attrs,
        [(t.number, t.state, t.values, t.params, t.user_attrs) for t in study.trials],
    )


def test_a_new_study_records_its_manifest(data, storage):
    study = random_search(data, storage, epochs=2)
    manifest = study.user_attrs[STUDY_MANIFEST]
    assert manifest["schema"] == 1
    assert manifest["epochs"] == 2 and manifest["metric"] == "val_loss"
    assert manifest["direction"] == "minimize"
    assert manifest["model"]["name"] == "build" and len(manifest["model"]["fingerprint"]) == 32
    assert manifest["data"]["kind"] == "arrays"
    assert manifest["data"]["train"] == {"x": [[96, 6], "float32"], "y": [[96], "int32"]}
    assert manifest["batch_sizes"] == [32] and manifest["seeds"] == [0]


def test_a_foreign_optuna_study_is_never_written_to(data, storage):
    foreign = optuna.create_study(study_name="foreign", storage=storage, direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    before = snapshot(storage, "foreign")
    with pytest.raises(StorageError, match="not created by bln-search"):
        random_search(data, storage, name="foreign")
    with pytest.raises(StorageError, match="not created by bln-search"):
        bln_search.search(models.build, data, study_name="foreign", storage=storage, epochs=1)
    assert snapshot(storage, "foreign") == before


def test_exporting_a_foreign_study_is_refused(storage):
    foreign = optuna.create_study(study_name="foreign", storage=storage, direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(StorageError, match="not created by bln-search"):
        bln_search.export_document(foreign)
    with pytest.raises(StorageError, match="not created by bln-search"):
        bln_search.leaderboard(foreign)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"epochs": 1}, "epochs: 2 in the study, 1 now"),
        ({"factory": models.build_other}, "model: build ["),
        ({"metric": "val_accuracy"}, "metric"),
        ({"data": "other"}, "data"),
        ({"strategy": "per-trial"}, "strategy"),
    ],
)
def test_a_resume_that_would_mix_incomparable_results_is_refused(data, storage, change, words):
    random_search(data, storage, epochs=2)
    before = snapshot(storage, "s")
    kwargs = {"epochs": 2, "n_trials": 2, **change}
    if kwargs.pop("data", None):
        (x, y), validation = models.load_data()
        data = bln_search.check_data(((x * 2, y), validation))
    kwargs.setdefault("strategy", "shared")
    with pytest.raises(StorageError, match="cannot take this run's results") as error:
        random_search(data, storage, **kwargs)
    assert words.split(" [")[0] in str(error.value)
    assert "new `study_name`" in str(error.value)
    assert snapshot(storage, "s") == before


def test_a_resume_may_add_seeds_and_batch_sizes(data, storage):
    bln_search.search(models.build, data, study_name="g", storage=storage, epochs=1, seeds=1)
    study = bln_search.search(
        models.build, data, study_name="g", storage=storage, epochs=1, seeds=2, batch_size=[32, 8]
    )
    manifest = study.user_attrs[STUDY_MANIFEST]
    assert manifest["seeds"] == [0, 1] and manifest["batch_sizes"] == [32, 8]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 16 * 4


def test_the_same_factory_under_another_path_spelling_resumes(data, storage, tmp_path):
    """The model is identified by what it builds, not by how its file was named."""
    from bln_search.loading import resolve_callable

    first = resolve_callable(f"{models.__file__}:build")
    random_search(data, storage, factory=first)
    study = random_search(data, storage, factory=models.build, n_trials=2)
    from bln_search.trials import is_duplicate, is_repeat

    # A budget of 2 distinct trials (a sampled repeat is answered from the study, not counted).
    assert len([t for t in study.trials if not (is_repeat(t) or is_duplicate(t))]) == 2
