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
