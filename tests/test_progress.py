"""The live display moves during a shared training, and it and the final table fit 80 columns."""

from __future__ import annotations

import io
import re

import optuna
import pytest
from rich.console import Console

import bln_search
from bln_search.cli.progress import LiveProgress
from bln_search.cli.results import print_leaderboard
from bln_search.formats import rich_table
from bln_search.results import leaderboard
from bln_search.trials import TrainingSetup, config_of
from tests.fixtures import models


def render(renderable) -> str:
    """What an 80-column terminal shows of `renderable`, as plain text."""
    console = Console(record=True, width=80, force_terminal=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A real shared search (16 configurations, 2 epochs of 3 batches) and frames of its display."""
    frames = {}

    class Watch(LiveProgress):
        def snap(self, moment):
            frames.setdefault(moment, (render(self.progress), self.progress.tasks[0].completed))

        def on_batch_start(self, epoch, epochs, batch, batches):
            super().on_batch_start(epoch, epochs, batch, batches)
            self.snap(("batch", epoch, batch))

        def on_epoch_end(self, number, epoch, epochs, value):
            super().on_epoch_end(number, epoch, epochs, value)
            if epoch == 1 and len(self.epoch_values) == 8:  # halfway through the evaluations
                self.snap("evaluating")

    storage = f"sqlite:///{tmp_path_factory.mktemp('progress') / 'study.db'}"
    data = bln_search.check_data(models.load_data())
    console = Console(width=80, force_terminal=True, file=io.StringIO())
    with Watch(console, "val_loss") as progress:
        bln_search.search(
            models.build, data, study_name="live", storage=storage, epochs=2, observer=progress
        )
        frames["end"] = (render(progress.progress), progress.progress.tasks[0].completed)
    return frames, optuna.load_study(study_name="live", storage=storage)


def rows(text: str, first: str) -> str:
    return next(row for row in text.splitlines() if row.startswith(first))


def test_the_epoch_row_shows_the_batches_then_the_evaluations(watched):
    frames, _ = watched
    text, _ = frames[("batch", 1, 1)]  # the first batch of each epoch is always reported
    assert "batch 1/3" in rows(text, "epoch"), text
    assert "1/2" in rows(text, "epoch")  # the epoch among the epochs
    text, completed = frames["evaluating"]
    assert "evaluating 8/16 · leader" in rows(text, "epoch"), text
    # The bar has 8 evaluations of 16 configurations' 2 epochs: 4 trials' worth; none is done.
    assert completed == 8 * 0.5 and "0/16" in rows(text, "trials"), text
    for text, _ in frames.values():
        assert all(len(row) <= 80 for row in text.splitlines()), text


def test_the_trials_row_ends_with_every_trial_counted_and_the_best_whole(watched):
    frames, study = watched
    text, completed = frames["end"]
    best = study.best_value
    assert completed == 16 and "epoch" not in text, text  # the epoch row left with its training
    ending = rf" 16/16 [0-9:]+ seed 0 bs 32 16 configs best val_loss {best:.4f}$"
    assert re.search(ending, rows(text, "trials").rstrip()), text


def test_the_leader_is_the_best_stored_value_of_the_last_evaluated_epoch(watched):
    frames, study = watched
    text, _ = frames[("batch", 2, 1)]
    first_epoch = {t.intermediate_values[0]: t for t in study.trials}
    best = min(first_epoch)
    label = config_of(first_epoch[best]).label
    assert f"batch 1/3 · leader {label} {best:.4f}" in rows(text, "epoch"), text


def test_the_final_table_fits_80_columns_with_whole_headers(watched):
    _, study = watched
    console = Console(record=True, width=80, force_terminal=True, file=io.StringIO())
    print_leaderboard(study, "table", console)
    text = console.export_text()
    assert "best ep." in text and "state" in text and "too narrow for" in text, text
    assert_whole_headers(text)


def test_a_terminal_too_narrow_for_the_statistics_wraps_lines_and_cuts_no_cell(watched):
    """At 18 columns the statistics column itself was cut ("BM B…"): another configuration."""
    _, study = watched
    console = Console(record=True, width=18, force_terminal=True, file=io.StringIO())
    print_leaderboard(study, "table", console)
    text = console.export_text()
    labels = {config_of(t).label for t in study.trials if t.state.name == "COMPLETE"}
    assert labels and all(label in text for label in labels), text
    assert "…" not in text, text


def test_several_seeds_and_baselines_fit_80_columns_too(watched):
    _, study = watched
    frame = leaderboard(study)
    frame["seeds"] = 2
    frame["val_loss_std"] = 0.0123
    frame["vs_winner"] = ["winner"] + ["tie"] * (len(frame) - 1)
    frame["p_value"] = 0.5
    frame.loc[len(frame) - 1, "model"] = "BatchNormalization"
    text = render(rich_table(frame, title="several seeds", width=80))
    assert "± 0.0123" in text and "BatchNormalization" in text and "vs winner" in text, text
    assert_whole_headers(text)


def assert_whole_headers(text: str) -> None:
    lines = text.splitlines()
    header = next(row for row in lines if row.startswith("┃"))
    assert "…" not in header, header
    assert all(len(row) <= 80 for row in lines), text


def test_a_long_status_gives_way_to_the_bar_and_counts():
    display = LiveProgress(Console(file=io.StringIO()), "val_sparse_categorical_accuracy")
    display.on_search_start(optuna.create_study(), 16)
    display.on_trial_start(15, None)
    display.on_epoch_end(15, 10, 100, 0.6522)
    row = rows(render(display.progress), "trials")
    assert row.startswith("trials ━━━━━━━━━━━━  0/16 0:00:00 #15 baseline epoch 10/100"), row
    assert row.endswith("…") and len(row) == 80, row


def test_the_epoch_row_leaves_when_a_failed_training_has_told_its_trials():
    study = optuna.create_study()
    display = LiveProgress(Console(file=io.StringIO()), "val_loss")
    display.on_search_start(study, 16)
    trials = [study.ask() for _ in range(2)]
    display.on_training_start(TrainingSetup(seed=0, batch_size=32), [None, None])
    for trial in trials:
        display.on_trial_start(trial.number, None)
    display.on_batch_start(1, 2, 1, 3)
    assert "batch 1/3" in rows(render(display.progress), "epoch")
    for trial in trials:  # the training raised: no on_training_end follows
        display.on_trial_end(study.tell(trial, state=optuna.trial.TrialState.FAIL))
    text = render(display.progress)
    assert "epoch" not in text and "0/16" in rows(text, "trials"), text  # failures run again
