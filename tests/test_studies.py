"""The bundled example studies build, load their data, and run a trial."""

from __future__ import annotations

import optuna
import pytest

import bln_search
from studies import digits_cnn, digits_rnn


@pytest.mark.slow
@pytest.mark.parametrize("study", [digits_cnn, digits_rnn], ids=["cnn", "rnn"])
def test_example_study_runs(study, tmp_path):
    (x, y), (xv, yv) = study.load_data()
    xt, yt = study.load_test()
    assert len(x) == 1200 and len(xv) == 300 and len(xt) == 297
    model = study.build()
    assert model.input_shape[1:] == x.shape[1:] and bln_search.find_bln_layers(model)
    result = bln_search.search(
        study.build,
        bln_search.check_data(study.load_data()),
        study_name="example",
        storage=f"sqlite:///{tmp_path / 'example.db'}",
        epochs=1,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=1,
    )
    assert result.trials[0].state == optuna.trial.TrialState.COMPLETE
