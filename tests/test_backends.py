"""The layer gives TensorFlow's numbers under JAX and PyTorch: forward, gradients, statistics.

`tests/backend_probe.py` runs in a subprocess per backend (`KERAS_BACKEND` is fixed
per process) and in this process under TensorFlow; every array it saves must agree.
A backend whose package is missing skips (`pip install -e ".[jax,torch]"` brings both),
except under `BLN_SEARCH_REQUIRE_BACKENDS=1`, where it fails: `.ci/run` installs the
extras after the README's test command and runs this file again with it set.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bln_search import configure
from bln_search.config import all_configurations
from tests.backend_probe import training_inputs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="compares other backends with TensorFlow"
    ),
]


@pytest.fixture(scope="module")
def tensorflow(tmp_path_factory):
    from tests.backend_probe import probe

    keras.utils.clear_session()
    return probe(tmp_path_factory.mktemp("tensorflow"))


def require(backend):
    if importlib.util.find_spec(backend) is None:
        message = f"{backend} is not installed (pip install -e '.[{backend}]')"
        if os.environ.get("BLN_SEARCH_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"BLN_SEARCH_REQUIRE_BACKENDS=1 but {message}")
        pytest.skip(message)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(backend, tensorflow, tmp_path):
    require(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    subprocess.run(
        [sys.executable, "-m", "tests.backend_probe", str(tmp_path)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    theirs = np.load(tmp_path / "results.npz")
    assert str(theirs["backend"]) == backend
    assert set(theirs.files) - {"backend"} == set(tensorflow)
    for key, expected in tensorflow.items():
        scale = max(1.0, float(np.max(np.abs(expected))))
        np.testing.assert_allclose(theirs[key], expected, atol=1e-4 * scale, err_msg=key)
    # The file saved under the other backend loads here and predicts what TensorFlow's does.
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = training_inputs()
    for config in all_configurations():
        configure(loaded, config)
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0),
            tensorflow[f"dense_predict_{config.label}"],
            atol=1e-4,
            err_msg=config.label,
        )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bln_search_run_completes_under_the_backend(backend, tmp_path):
    """The search itself is backend-neutral Keras (tf.data feeds every backend)."""
    import optuna

    require(backend)
    fixture = ROOT / "tests" / "fixtures" / "models.py"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "bln-search"), "run", "--model", f"{fixture}:build"]
        + ["--data", f"{fixture}:load_data", "--epochs", "1", "--storage", storage, "-q"],
        cwd=tmp_path,
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="models-build", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 16
