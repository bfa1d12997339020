"""Seeds, ties, baselines, batch sizes, test data and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

import bln_search
from bln_search.baselines import BASELINES, replace_bln
from bln_search.config import FLAG_NAMES, StatisticsConfig
from bln_search.errors import BLNSearchError, UserCodeError
from bln_search.results import leaderboard, winners
from bln_search.stats import mark_ties, welch_p_value
from bln_search.trials import config_of
from tests.fixtures import models
from tests.helpers import FIX, command, synthetic_study

COMPLETE = optuna.trial.TrialState.COMPLETE


# -- the statistics, on values where the answer is known ------------------------------------


def test_welch_p_value_matches_the_textbook_example():
    # t = -3.674, Welch-Satterthwaite df = 4: two-sided p = 0.0213 (equal variances, so Student's t agrees).
    assert welch_p_value([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.02131, abs=1e-4)
    assert welch_p_value([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert math.isnan(welch_p_value([1.0], [1.0, 2.0]))
    assert (
        welch_p_value([0.5, 0.5], [0.5, 0.5]) == 1.0
        and welch_p_value([0.5, 0.5], [0.7, 0.7]) == 0.0
    )


def test_mark_ties_separates_noise_from_real_differences():
    rng = np.random.default_rng(0)
    winner = list(0.10 + rng.normal(0, 0.001, 5))
    samples = {
        "winner": winner,
        "within noise": list(np.array(winner) + rng.normal(0, 0.001, 5) + 0.0003),
        "clearly worse": list(0.20 + rng.normal(0, 0.001, 5)),
        "one seed": [0.1],
    }
    verdicts = {name: verdict for name, (_, verdict) in mark_ties(samples, "winner").items()}
    assert verdicts == {
        "winner": "winner",
        "within noise": "tie",
        "clearly worse": "worse",
        "one seed": "n/a",
    }


def test_the_leaderboard_marks_ties_with_the_winner_per_batch_size():
    a, b, c = (
        StatisticsConfig(True, True, False, False),
        StatisticsConfig(False, False, False, False),
        StatisticsConfig(True, True, True, True),
    )
    study = synthetic_study(
        {
            (a, 8): [0.100, 0.110, 0.090],
            (b, 8): [0.105, 0.115, 0.095],  # within the seeds' noise of a
            (c, 8): [0.300, 0.310, 0.290],  # clearly worse
            ("batch_norm", 8): [0.010, 0.012, 0.011],  # clearly better than any BLN configuration
            ("layer_norm", 8): [0.5],  # a single seed: no test possible
            (c, 32): [0.20, 0.21, 0.19],  # at batch size 32, c wins
            (a, 32): [0.40, 0.41, 0.39],
        }
    )
    board = leaderboard(study)
    at8 = board[board["batch_size"] == 8]
    verdict = {
        StatisticsConfig(*(bool(row[f]) for f in FLAG_NAMES)): row["vs_winner"]
        for _, row in at8[at8["model"] == "BLN"].iterrows()
    }
    assert verdict == {a: "winner", b: "tie", c: "worse"}
    assert (
        board[(board["batch_size"] == 8) & (board["model"] == "BatchNormalization")][
            "vs_winner"
        ].item()
        == "better"
    )
    assert (
        board[(board["batch_size"] == 8) & (board["model"] == "LayerNormalization")][
            "vs_winner"
        ].item()
        == "n/a"
    )
    winner_row = board[(board["batch_size"] == 8) & (board["vs_winner"] == "winner")].iloc[0]
    assert winner_row["val_loss"] == pytest.approx(0.1) and winner_row[
        "val_loss_std"
    ] == pytest.approx(0.01)
    assert winner_row["seeds"] == 3 and len(at8) == 5
    found = winners(study)
    assert StatisticsConfig(*(bool(found[8][f]) for f in FLAG_NAMES)) == a
    assert StatisticsConfig(*(bool(found[32][f]) for f in FLAG_NAMES)) == c


# -- seeds, baselines and batch sizes through the search ------------------------------------


def test_seeds_evaluate_every_configuration_under_each_seed(data, storage):
    study = bln_search.search(
        models.build, data, study_name="seeds", storage=storage, epochs=2, seeds=2
    )
    assert len(study.get_trials(states=(COMPLETE,))) == 32
    board = leaderboard(study)
    assert len(board) == 16 and set(board["seeds"]) == {2} and board["val_loss_std"].notna().all()
    row = board.iloc[0]
    config = StatisticsConfig(*(bool(row[f]) for f in FLAG_NAMES))
    values = [t.value for t in study.trials if config_of(t) == config]
    assert row["val_loss"] == pytest.approx(np.mean(values)) and row[
        "val_loss_std"
    ] == pytest.approx(np.std(values, ddof=1))
    assert (
        set(board["vs_winner"]) <= {"winner", "tie", "worse"}
        and (board["vs_winner"] == "winner").sum() == 1
    )


def test_baselines_replace_every_bln_layer_by_cloning_and_keep_the_compile_settings():
    import keras

    original = models.build()
    for name, expected in (
        ("batch_norm", keras.layers.BatchNormalization),
        ("layer_norm", keras.layers.LayerNormalization),
        ("no_norm", keras.layers.Identity),
    ):
        clone = replace_bln(original, name)
        assert not bln_search.find_bln_layers(clone)
        assert sum(isinstance(layer, expected) for layer in clone.layers) == 1
        assert clone.get_compile_config() == original.get_compile_config()
        assert clone.optimizer is not original.optimizer
        x, y = models.load_data()[0]
        assert np.isfinite(clone.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_a_subclassed_model_cannot_get_baselines_and_says_why():
    import keras

    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.norm = bln_search.BatchLayerNormalization()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(self.norm(x))

    model = Custom()
    model(np.zeros((2, models.FEATURES), "float32"))
    model.compile(loss="mse")
    with pytest.raises(UserCodeError, match="Sequential or functional"):
        replace_bln(model, "batch_norm")


def test_baselines_and_batch_sizes_each_get_their_own_rows_and_winners(data, storage):
    study = bln_search.search(
        models.build,
        data,
        study_name="b",
        storage=storage,
        epochs=2,
        batch_size=[16, 48],
        baselines=True,
    )
    board = leaderboard(study)
    assert sorted(board["batch_size"].unique()) == [16, 48]
    for _, group in board.groupby("batch_size"):
        assert len(group) == 16 + len(BASELINES)
        assert set(group["model"]) == {"BLN", *(b.label for b in BASELINES.values())}
        assert list(group["rank"]) == list(range(1, len(group) + 1))
    baseline_trials = [t for t in study.trials if "baseline" in t.user_attrs]
    assert len(baseline_trials) == 2 * len(BASELINES) and all(not t.params for t in baseline_trials)
    document = bln_search.export_document(study)
    assert set(document["by_batch_size"]) == {"16", "48"}
    for size, entry in document["by_batch_size"].items():
        row = winners(study)[int(size)]
        assert entry["config"] == {f: bool(row[f]) for f in FLAG_NAMES}
    assert document["config"] == document["by_batch_size"]["16"]["config"]


def test_several_seeds_or_batch_sizes_need_the_grid(data, storage):
    with pytest.raises(BLNSearchError, match="need the grid"):
        bln_search.search(
            models.build,
            data,
            study_name="x",
            storage=storage,
            seeds=2,
            sampler=optuna.samplers.RandomSampler(0),
            n_trials=3,
        )


# -- the command line: test data, batch sizes, report ---------------------------------------


@pytest.mark.slow
def test_test_data_is_reported_for_the_winners_and_never_chooses(searched):
    folder, stderr = searched
    study = optuna.load_study(
        study_name="models-build", storage=f"sqlite:///{folder / 'bln-search.db'}"
    )
    tested = study.user_attrs["test"]
    assert set(tested) == {"16", "48"}
    for size, result in tested.items():
        assert set(result["metrics"]) == {"test_loss", "test_accuracy"}
        assert f"test (batch size {size}, winner {result['label']}" in stderr
        row = winners(study)[
            int(size)
        ]  # the winner is the validation winner, whatever the test says
        assert result["config"] == {f: bool(row[f]) for f in FLAG_NAMES}
    assert (
        "batch size 16:" in stderr and "batch size 48:" in stderr
    )  # one leaderboard per batch size


@pytest.mark.slow
def test_bad_batch_sizes_and_test_data_are_one_line_errors(tmp_path):
    for args, message in (
        (["--batch-sizes", "8,x"], "--batch-sizes must be positive integers"),
        (["--batch-sizes", "0"], "--batch-sizes must be positive integers"),
        (["--test", "no_such_function"], "defines no function no_such_function() for --test"),
        (["--test", "missing.npz"], "cannot read x_test and y_test from missing.npz"),
    ):
        result = command("run", "--model", f"{FIX}:build", "--epochs", "1", *args, cwd=tmp_path)
        assert (
            result.returncode == 1
            and result.stderr.startswith("error:")
            and message in result.stderr
        ), result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bln-search.db").exists() or not optuna.get_all_study_summaries(
        f"sqlite:///{tmp_path / 'bln-search.db'}"
    )


@pytest.mark.slow
def test_the_export_and_leaderboard_carry_every_batch_size(searched):
    folder, _ = searched
    exported = command("export", "-o", "-", cwd=folder)
    document = json.loads(exported.stdout)
    assert (
        set(document["by_batch_size"]) == {"16", "48"}
        and document["by_batch_size"]["16"]["seeds"] == 2
    )
    assert bln_search.load_config(
        write(folder / "best.json", exported.stdout)
    ) == StatisticsConfig.from_mapping(document["config"])
    frame = json.loads(command("leaderboard", "--format", "json", cwd=folder).stdout)
    assert {row["batch_size"] for row in frame} == {16, 48} and {row["model"] for row in frame} >= {
        "BLN",
        "BatchNormalization",
    }


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
