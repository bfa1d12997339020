"""The paper's studies load their datasets through Keras's cache and run a search, with no network.

Small stand-ins are written in the cached files' own formats (CIFAR-10's pickled
batches in a tar.gz, IMDB's `.npz` of ragged word-index lists) into a temporary
Keras home; downloads are refused, and Keras's hash check is switched off here
only, since a stand-in cannot match the real file's hash. The real loading code
and the real `build()` run on them.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.error

import keras
import numpy as np
import pytest
from keras.src.backend import config as keras_config
from keras.src.utils import file_utils
from typer.testing import CliRunner

import bln_search
from bln_search.cli import app
from bln_search.errors import DatasetUnavailable
from studies import cifar10_cnn, imdb_lstm, paper

PER_BATCH = 8  # CIFAR-10 images per stand-in batch file: 40 training images, 8 test ones
REVIEWS = 40  # IMDB stand-in reviews, training and test each
VALIDATION = 10  # held out instead of the paper's 5,000


def _refuse_download(url, *args, **kwargs):
    raise urllib.error.URLError(f"no network in tests ({url})")


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home (KERAS_HOME, and Keras's copy of it read at import), downloads refused."""
    home = tmp_path / "keras"
    (home / "datasets").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    monkeypatch.setattr(file_utils, "urlretrieve", _refuse_download)
    return home / "datasets"


@pytest.fixture
def stand_ins(keras_home, monkeypatch):
    """Stand-in CIFAR-10 and IMDB files in the cache, under the names keras.datasets uses."""
    rng = np.random.default_rng(0)
    archive = keras_home / paper.CIFAR10.cached_name
    with tarfile.open(archive, "w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            batch = {
                b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, PER_BATCH).tolist(),
            }
            content = pickle.dumps(batch, protocol=3)  # bytes keys, as the real files
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))

    def reviews():
        lengths = rng.integers(20, 120, REVIEWS)  # longer and shorter than the 80 kept
        return np.array(
            [rng.integers(1, 25000, n).tolist() for n in lengths], dtype=object
        ), rng.integers(0, 2, REVIEWS)

    (x_train, y_train), (x_test, y_test) = reviews(), reviews()
    np.savez(
        keras_home / paper.IMDB.cached_name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    monkeypatch.setattr(paper, "VALIDATION_SAMPLES", VALIDATION)
    return keras_home


def test_the_paper_splits_and_preprocessing(stand_ins):
    (x, y), (xv, yv) = cifar10_cnn.load_data()
    assert x.shape == (5 * PER_BATCH - VALIDATION, 32, 32, 3) and xv.shape[0] == VALIDATION
    assert x.dtype == np.float32 and y.shape == (len(x), 10) and set(y.sum(axis=1)) == {1.0}
    everything = np.concatenate([x, xv])  # standardized per pixel and channel over training
    assert np.allclose(everything.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(everything.std(axis=0), 1, atol=1e-3)
    (x20, _), (xv20, _) = cifar10_cnn.load_data_20()
    assert len(x20) == round(0.2 * len(x)) and len(xv20) == round(0.2 * VALIDATION)
    assert np.array_equal(x20, x[: len(x20)]) and np.array_equal(xv20, xv[: len(xv20)])
    assert cifar10_cnn.load_test()[0].shape == (PER_BATCH, 32, 32, 3)

    (t, u), (tv, uv) = imdb_lstm.load_data()
    assert t.shape == (REVIEWS - VALIDATION, 80) and tv.shape == (VALIDATION, 80)
    assert t.max() < 20000 and u.shape == (len(t), 1) and set(np.unique(u)) <= {0.0, 1.0}
    assert len(imdb_lstm.load_data_20()[0][0]) == round(0.2 * len(t))
    assert imdb_lstm.load_test()[0].shape == (REVIEWS, 80)


@pytest.mark.slow
@pytest.mark.parametrize(
    "study, baselines", [(cifar10_cnn, True), (imdb_lstm, False)], ids=["cifar10", "imdb"]
)
def test_a_one_epoch_search_on_the_stand_ins(stand_ins, tmp_path, study, baselines):
    model = study.build()
    assert len(bln_search.find_bln_layers(model)) == (4 if study is cifar10_cnn else 3)
    result = bln_search.search(
        study.build,
        bln_search.check_data(study.load_data()),
        study_name="paper",
        storage=f"sqlite:///{tmp_path / 'paper.db'}",
        epochs=1,
        batch_size=10,
        baselines=baselines,
    )
    board = bln_search.leaderboard(result)
    assert len(board) == 16 + (3 if baselines else 0)
    assert (board["state"] == "complete").all(), board
    assert board["val_loss"].notna().all()
    del model
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "study, dataset", [("cifar10_cnn", paper.CIFAR10), ("imdb_lstm", paper.IMDB)]
)
def test_offline_and_not_cached_is_one_line(keras_home, tmp_path, study, dataset):
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            f"studies.{study}:build",
            "--storage",
            f"sqlite:///{tmp_path / 'offline.db'}",
            "--epochs",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {dataset.name} ({dataset.size}) is not in Keras's cache")
    assert str(keras_home / dataset.cached_name) in lines[0] and dataset.origin in lines[0]
    assert "Traceback" not in result.output


def test_a_cached_file_that_fails_its_hash_is_named_as_such(keras_home):
    (keras_home / paper.IMDB.cached_name).write_bytes(b"not the IMDB archive")
    with pytest.raises(DatasetUnavailable) as raised:
        imdb_lstm.load_data()
    assert str(raised.value).startswith(
        "IMDB (17 MB) was in Keras's cache but did not match its published hash"
    )
    assert "\n" not in str(raised.value)
