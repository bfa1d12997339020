import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest  # noqa: E402


@pytest.fixture
def data():
    """The tiny fixture model's training and validation data."""
    import bln_search
    from tests.fixtures import models

    return bln_search.check_data(models.load_data())


@pytest.fixture
def storage(tmp_path):
    """A fresh SQLite storage URL in the test's own folder."""
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of the PostgreSQL server `.ci/postgres start` started (CI always has one)."""
    url = os.environ.get("BLN_SEARCH_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but BLN_SEARCH_POSTGRES_URL is not set: .ci/run must start PostgreSQL"
            )
        pytest.skip('no PostgreSQL server: eval "$(.ci/postgres start)" starts one (CI does)')
    return url


@pytest.fixture(scope="session")
def searched(tmp_path_factory):
    """One CLI study with seeds, baselines, two batch sizes and test data.

    Trained once per session: tests/test_answers.py and tests/test_report.py read it.
    """
    from tests.helpers import FIX, command

    folder = tmp_path_factory.mktemp("answers")
    run = command(
        "run",
        "--model",
        f"{FIX}:build",
        "--epochs",
        "2",
        "--seeds",
        "2",
        "--baselines",
        "--batch-sizes",
        "16,48",
        "-q",
        "--test",
        "load_test",
        cwd=folder,
    )
    assert run.returncode == 0, run.stderr
    return folder, run.stderr
