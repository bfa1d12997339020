"""The report answers at a glance: verdicts, flag effects, figures and tables a browser shows whole."""

from __future__ import annotations

import io
import json
import os
import re

import pytest

from bln_search.config import FLAG_NAMES, StatisticsConfig, all_configurations
from bln_search.formats import rich_table, to_text
from bln_search.report import write_html
from bln_search.results import leaderboard, trials_frame
from bln_search.stats import welch_p_value
from bln_search.summary import flag_effects, verdict
from tests.helpers import chromium, command, probe_page, synthetic_study

NOISE = [0.0, 0.01, -0.01]  # the same seed noise everywhere: identical samples tie with p = 1


def known_study():
    """batch_moving_var on adds exactly 0.1 to val_loss; the other flags change nothing.

    So the 8 configurations with it off tie for best; LayerNormalization is clearly
    better, BatchNormalization within noise of the best, no_norm has a single seed.
    """
    values = {
        (config, 8): [0.5 + 0.1 * config.batch_moving_var + n for n in NOISE]
        for config in all_configurations()
    }
    values[("layer_norm", 8)] = [0.3 + n for n in NOISE]
    values[("batch_norm", 8)] = [0.52 + n for n in NOISE]
    values[("no_norm", 8)] = [0.9]
    values[(StatisticsConfig(False, False, False, False), 32)] = [0.4]
    values[(StatisticsConfig(True, True, True, True), 32)] = [0.45]
    return synthetic_study(values)


def test_flag_effects_recover_the_flag_that_adds_a_fixed_amount():
    effects = flag_effects(trials_frame(known_study()), 8).set_index("flag")
    assert list(effects.index) == list(FLAG_NAMES)
    assert effects.loc["batch_moving_var", "difference"] == pytest.approx(0.1)
    assert effects.loc["batch_moving_var", "off"] == pytest.approx(0.5)
    assert effects.loc["batch_moving_var", "on"] == pytest.approx(0.6)
    assert effects.loc["batch_moving_var", "p_value"] < 1e-6
    for flag in ("batch_moving_mean", "feature_moving_mean", "feature_moving_var"):
        assert effects.loc[flag, "difference"] == pytest.approx(0.0, abs=1e-12)
        assert effects.loc[flag, "p_value"] == pytest.approx(1.0)
    assert (effects["off_runs"] == 24).all() and (effects["on_runs"] == 24).all()
    assert (effects["on_low"] < effects["on"]).all() and (effects["on"] < effects["on_high"]).all()


def test_the_verdict_says_who_ties_which_baseline_wins_and_which_flag_matters():
    study = known_study()
    runs = trials_frame(study)
    board = leaderboard(study, runs=runs)
    text = verdict(board, flag_effects(runs, 8), 8, "val_loss", "minimize")
    p_layer = welch_p_value([0.3 + n for n in NOISE], [0.5 + n for n in NOISE])
    p_batch = welch_p_value([0.52 + n for n in NOISE], [0.5 + n for n in NOISE])
    assert text.startswith("At batch size 8, 8 configurations tie for best: ")
    assert "(val_loss 0.5000 ± 0.0100 over 3 seeds)" in text
    assert f"LayerNormalization is better than every BLN configuration (p = {p_layer:.2g})" in text
    assert f"BatchNormalization ties with the best (p = {p_batch:.2g})" in text
    assert "no normalization reaches 0.9000, untested (one seed)" in text
    assert re.search(r"Turning batch_moving_var on raises val_loss by 0\.1000 \(worse, p = ", text)
    assert (
        "The other flags' effects (batch_moving_mean, feature_moving_mean, feature_moving_var)"
        " are within the seeds' noise." in text
    )
    single = verdict(board, flag_effects(runs, 32), 32, "val_loss", "minimize")
    assert single.startswith("At batch size 32, -- -- -- -- is best (val_loss 0.4000 over 1 seed)")
    assert "with one seed, ties with it cannot be tested" in single


def test_empty_cells_read_as_a_dash_or_null_in_every_format(tmp_path):
    study = known_study()
    board = leaderboard(study)
    csv = to_text(board, "csv")
    baseline = next(line for line in csv.splitlines() if "LayerNormalization" in line)
    assert ",,,," in baseline  # the four flags of a baseline: empty fields
    records = json.loads(to_text(board, "json"))
    layer = next(r for r in records if r["model"] == "LayerNormalization")
    assert all(layer[flag] is None for flag in FLAG_NAMES)
    single = next(r for r in records if r["model"] == "no normalization")
    assert single["val_loss_std"] is None and single["p_value"] is None
    raw_json = to_text(board, "json")
    assert "\\/" not in raw_json and "NaN" not in raw_json
    markdown = to_text(board, "markdown")
    assert "–" in markdown
    for text in (csv, markdown):
        assert not re.search(r"\bnan\b|<NA>", text, re.I), text
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    console.print(rich_table(board[board["batch_size"] == 8]))
    terminal = console.file.getvalue()
    assert "–" in terminal and not re.search(r"\bnan\b|<NA>", terminal, re.I)
    page = write_html(study, tmp_path / "report.html").read_text()
    visible = re.sub(r"<script.*?</script>", "", page, flags=re.S)
    assert "&lt;NA&gt;" not in visible and not re.search(r">\s*nan\s*<", visible)


def _check_probe(seen: dict, batch_sizes: list[int], incomplete: tuple[int, ...] = ()) -> None:
    """The figures in order per batch size; fANOVA importance only where the grid is incomplete."""
    assert seen["errors"] == "", seen
    expected = [
        f"{kind}-{b}"
        for b in batch_sizes
        for kind in ("ranked", "effects", *(["importance"] if b in incomplete else []), "curves")
    ]
    assert seen["figures"] == expected, seen
    assert len(seen["verdicts"]) == len(batch_sizes) and seen["verdicts_first"], seen
    assert seen["width"] == 1280 and seen["overflow"] <= 0, seen
    assert seen["bad"] == [], seen


def _browser() -> str:
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium: .ci/run must install Debian's chromium")
        pytest.skip("no chromium to render the report (apt-get install chromium; CI does)")
    return browser


def test_the_report_of_a_known_study_fits_1280px_in_chromium(tmp_path):
    browser = _browser()
    page = write_html(known_study(), tmp_path / "report.html")
    seen = probe_page(page, browser)
    _check_probe(seen, [8, 32], incomplete=(32,))
    assert seen["verdicts"][0].startswith("At batch size 8, 8 configurations tie for best")


@pytest.mark.slow
def test_the_report_renders_its_figures_in_headless_chromium_without_script_errors(searched):
    folder, _ = searched
    result = command("report", "-o", "report.html", "--png", cwd=folder)
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.name for p in folder.glob("report-*.png"))
    assert pngs == sorted(
        f"report-{kind}-bs{b}.png" for b in (16, 48) for kind in ("ranked", "effects", "curves")
    )
    assert all((folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    _check_probe(probe_page(folder / "report.html", _browser()), [16, 48])
