"""Checkpoints in Optuna's artifact store: resume from the last epoch, and the winner's own model."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import optuna
import pytest

import bln_search
from bln_search import SearchInterrupted
from bln_search.checkpoints import resume_epoch
from bln_search.errors import StorageError
from bln_search.storage import load_existing_study, open_existing_storage
from bln_search.trials import config_of, setup_of
from tests.fixtures import models
from tests.helpers import BIN, FIX, command

COMPLETE = optuna.trial.TrialState.COMPLETE
RUNNING = optuna.trial.TrialState.RUNNING


def curves(study):
    """{(configuration, setup): [value per epoch]} of the complete trials."""
    return {
        (config_of(t), setup_of(t)): [
            t.intermediate_values[e] for e in sorted(t.intermediate_values)
        ]
        for t in study.get_trials(states=(COMPLETE,))
    }


class StopAt(bln_search.SearchObserver):
    """Raises Ctrl-C once epoch `epoch`'s evaluations begin, after earlier epochs were saved."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_evaluation_start(self, epoch, epochs, configs):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture
def deterministic():
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


SHARED = dict(epochs=5, batch_size=16, pruner=None, patience=None)
"""The shared searches of `models.build_adam_dropout` that are cut and resumed below."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The curves of the `SHARED` search run whole, with deterministic ops (computed once)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    folder = tmp_path_factory.mktemp("whole")
    data = bln_search.check_data(models.load_data())
    whole = bln_search.search(
        models.build_adam_dropout,
        data,
        study_name="whole",
        storage=f"sqlite:///{folder / 'a.db'}",
        **SHARED,
    )
    return curves(whole)


def test_an_interrupted_training_resumes_from_its_last_epoch_with_an_uninterrupted_run_s_values(
    data, tmp_path, uninterrupted
):
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(SearchInterrupted):
        bln_search.search(
            models.build_adam_dropout,
            data,
            study_name="cut",
            storage=storage,
            observer=StopAt(4),
            **SHARED,
        )
    resumed = bln_search.search(
        models.build_adam_dropout, data, study_name="cut", storage=storage, **SHARED
    )
    complete = resumed.get_trials(states=(COMPLETE,))
    assert len(complete) == 16
    assert {t.user_attrs.get("resumed_after") for t in complete} == {3}  # epochs 1-3 not retrained
    expected, found = uninterrupted, curves(resumed)
    assert set(found) == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(found[key], values, rtol=1e-6, atol=1e-7)
    # Only the complete trials' best epochs are kept; the rest were removed.
    folder = tmp_path / "b.artifacts"
    kept = {
        m.artifact_id
        for t in complete
        for m in optuna.artifacts.get_all_artifact_meta(t, storage=resumed._storage)
    }
    assert kept and set(os.listdir(folder)) == kept


class StopTrialAt(bln_search.SearchObserver):
    """Raises Ctrl-C at the end of a per-trial training's epoch `epoch`, after earlier epochs were saved."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trial_number, epoch, epochs, value):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_per_trial_training_resumes_its_own_values_from_its_last_epoch(
    data, tmp_path, deterministic
):
    """A factory that searches its learning rate: the re-run takes the interrupted trial's
    flags and learning rate again, continues after epoch 2, and keeps its best model."""
    from bln_search.layer_tools import grouped_inference

    factory = models.build_adam_dropout_with_trial

    def search(name, storage, **more):
        sampler = optuna.samplers.RandomSampler(0)
        return bln_search.search(
            factory, data, study_name=name, storage=storage, sampler=sampler, n_trials=1,
            epochs=5, batch_size=16, pruner=None, patience=None, **more,
        )  # fmt: skip

    whole = search("whole", f"sqlite:///{tmp_path / 'a.db'}")
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(SearchInterrupted):
        search("cut", storage, observer=StopTrialAt(3))
    resumed = search("cut", storage)
    [expected] = whole.get_trials(states=(COMPLETE,))
    [found] = resumed.get_trials(states=(COMPLETE,))
    assert found.params == expected.params
    assert found.user_attrs.get("resumed_after") == 2  # epochs 1-2 were not trained again
    np.testing.assert_allclose(
        [found.intermediate_values[e] for e in range(5)],
        [expected.intermediate_values[e] for e in range(5)],
        rtol=1e-6,
        atol=1e-7,
    )
    # The trial keeps its best epoch's model; nothing else stays in the store.
    metas = optuna.artifacts.get_all_artifact_meta(found, storage=resumed._storage)
    assert {m.artifact_id for m in metas} == set(os.listdir(tmp_path / "b.artifacts"))
    model, trial = bln_search.trained_model(resumed)
    assert trial.number == found.number
    _, (x, y) = models.load_data()
    with grouped_inference(model, 16):
        value = model.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)["loss"]
    assert value == pytest.approx(found.value, rel=1e-5)


def test_a_checkpoint_that_fails_to_load_half_way_trains_from_epoch_1_on_fresh_weights(
    data, tmp_path, uninterrupted
):
    """A file Keras loads layer by layer and then refuses (another last layer) left the first
    layers loaded: "training from epoch 1" went on from those weights, with exit 0."""
    import keras

    factory = models.build_adam_dropout
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(SearchInterrupted):
        bln_search.search(
            factory, data, study_name="cut", storage=storage, observer=StopAt(4), **SHARED
        )
    other = keras.Sequential(
        [keras.Input((models.FEATURES,)), keras.layers.Dense(8, kernel_initializer="ones")]
        + [bln_search.BatchLayerNormalization(), keras.layers.Dense(3)]
    )
    other.compile(optimizer="adam", loss="mse")
    for name in os.listdir(tmp_path / "b.artifacts"):  # every kept file, the resume point too
        other.save(tmp_path / "other.keras")
        os.replace(tmp_path / "other.keras", tmp_path / "b.artifacts" / name)
    with pytest.warns(UserWarning, match="cannot resume from checkpoint .*: training from epoch 1"):
        resumed = bln_search.search(factory, data, study_name="cut", storage=storage, **SHARED)
    complete = resumed.get_trials(states=(COMPLETE,))
    assert len(complete) == 16 and not any("resumed_after" in t.user_attrs for t in complete)
    expected, found = uninterrupted, curves(resumed)
    for key, values in expected.items():
        np.testing.assert_allclose(found[key], values, rtol=1e-6, atol=1e-7)


def test_export_model_writes_the_winner_s_trained_model_without_training(tmp_path):
    import keras

    from bln_search.layer_tools import find_bln_layers, grouped_inference

    ran = command(
        "run", "--model", f"{FIX}:build", "--epochs", "3", "--batch-size", "16", "-q", cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    exported = command("export", "-o", "best.json", "--model", "best.keras", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    import json

    document = json.loads((tmp_path / "best.json").read_text())
    model = keras.saving.load_model(tmp_path / "best.keras")
    layer = find_bln_layers(model)[0]
    assert {name: bool(getattr(layer, name)) for name in document["config"]} == document["config"]
    _, (x, y) = models.load_data()
    with grouped_inference(model, 16):
        value = model.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)["loss"]
    assert document["model"]["trial"] == document["trial"]
    assert value == pytest.approx(document["model"]["value"], rel=1e-5)
    assert value == pytest.approx(document["metric"]["value"], rel=1e-5)


def test_export_model_without_kept_models_is_one_line(tmp_path):
    ran = command(
        "run",
        "--model",
        f"{FIX}:build",
        "--epochs",
        "2",
        "-q",
        "--artifacts",
        str(tmp_path / "art"),
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    # Another artifact folder: the search's models are not there.
    (tmp_path / "empty").mkdir()
    exported = command(
        "export", "--model", "m.keras", "--artifacts", str(tmp_path / "empty"), cwd=tmp_path
    )
    assert exported.returncode != 0
    assert "Traceback" not in exported.stderr and len(exported.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.keras").exists()
    # The recorded folder is found without naming it.
    exported = command("export", "--model", "m.keras", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "m.keras").is_file()


def _checkpointed_epoch(db, study="s"):
    """The epoch a killed run would resume after, read as `bln-search leaderboard` reads:
    nothing created or written while the run writes."""
    try:
        return resume_epoch(load_existing_study(open_existing_storage(f"sqlite:///{db}"), study))
    except StorageError:  # not created yet
        return 0


def test_a_sigkilled_shared_training_resumes_from_its_last_epoch_and_matches(tmp_path):
    args = [
        "run",
        "--model",
        f"{FIX}:build_slow",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--pruner",
        "none",
        "--patience",
        "0",
        "-q",
        "--heartbeat",
        "1",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_DETERMINISTIC_OPS": "1"}
    env.update(BLN_TEST_PAUSE="0")  # the victim is stopped by BLN_TEST_HANG_AT below
    env.pop("BLN_SEARCH_STORAGE", None)
    (tmp_path / "whole").mkdir(), (tmp_path / "cut").mkdir()
    whole = subprocess.run(
        [str(BIN / "bln-search"), *args, "--study", "s"],
        cwd=tmp_path / "whole",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert whole.returncode == 0, whole.stderr
    # The victim hangs in epoch 3's first batch, after epoch 2's checkpoint: killed there, not
    # raced (under load a polling test saw the run finish first).
    batches = -(-len(models.load_data()[0][0]) // 16)
    victim = subprocess.Popen(
        [str(BIN / "bln-search"), *args, "--study", "s"],
        cwd=tmp_path / "cut",
        env={**env, "BLN_TEST_HANG_AT": str(2 * batches + 1)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while _checkpointed_epoch(tmp_path / "cut" / "bln-search.db") < 2:
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    assert _checkpointed_epoch(tmp_path / "cut" / "bln-search.db") == 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    rerun = subprocess.run(
        [str(BIN / "bln-search"), *args, "--study", "s"],
        cwd=tmp_path / "cut",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    a = optuna.load_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'whole' / 'bln-search.db'}"
    )
    b = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'cut' / 'bln-search.db'}")
    assert not b.get_trials(states=(RUNNING,))
    complete = b.get_trials(states=(COMPLETE,))
    assert len(complete) == 16 and min(t.user_attrs.get("resumed_after", 0) for t in complete) >= 2
    expected, found = curves(a), curves(b)
    assert set(found) == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(found[key], values, rtol=1e-6, atol=1e-7)
