"""The live display moves during a shared training and fits an 80-column terminal."""

from __future__ import annotations

import io

from rich.console import Console

import bln_search
from bln_search.cli.progress import LiveProgress
from tests.fixtures import models


def test_the_live_display_shows_evaluations_and_the_leader_mid_training(data, storage):
    console = Console(width=80, force_terminal=True, color_system=None)
    seen = []

    class Watch(LiveProgress):
        def on_epoch_end(self, number, epoch, epochs, value):
            super().on_epoch_end(number, epoch, epochs, value)
            if epoch == 1 and len(self.epoch_values) == 8:  # halfway through the first epoch
                frame = Console(record=True, width=80, color_system=None, file=io.StringIO())
                frame.print(self.progress.make_tasks_table(self.progress.tasks))
                seen.append((frame.export_text(), self.progress.tasks[0].completed))

    with Watch(console, "val_loss") as progress:
        bln_search.search(
            models.build, data, study_name="live", storage=storage, epochs=2, observer=progress
        )
    text, completed = seen[0]
    line = [row for row in text.splitlines() if "trials" in row][-1]
    assert "epoch 1/2 8/16 evaluated, leader" in line, line
    assert completed == 8 * 0.5 and "4/16" in line  # 16 configurations, half of epoch 1 each...
    assert all(len(row) <= 80 for row in text.splitlines()), [
        r for r in text.splitlines() if len(r) > 80
    ]
