"""`bln-search report`: one self-contained HTML page (plotly, with optuna.visualization), or PNGs.

At the top, a verdict per batch size in words and the winners (with their test
metric when one was measured). Then per batch size, in this order: every
configuration and baseline ranked with its spread over seeds, each flag's
effect (mean metric with the flag off and on), fANOVA importance only where the
grid is incomplete, the validation curves (winner, ties and baselines
highlighted, the rest muted) and the leaderboard. Figures and sentences come
from the same frames as `bln-search leaderboard`. plotly.js is inlined once,
so the page works offline.
"""

from __future__ import annotations

import html
from pathlib import Path

import optuna
import pandas as pd

from bln_search import figures
from bln_search.config import FLAG_NAMES, StatisticsConfig
from bln_search.errors import SearchFailed
from bln_search.formats import EMPTY, PARAMS_PREFIX, is_empty
from bln_search.results import BLN_MODEL, leaderboard, study_metric, trials_frame, winners
from bln_search.summary import complete_grid, flag_effects, verdict

# The page records its own script errors and how many figures rendered, so a headless
# browser (and the tests) can check it without a driver: chromium --dump-dom.
_SELF_CHECK = """
<pre id="script-errors" style="display:none"></pre>
<script>
window.addEventListener("error", function (event) {
  document.getElementById("script-errors").textContent += (event.message || "error") + "\\n";
});
window.addEventListener("load", function () {
  document.body.setAttribute("data-figures-rendered", document.querySelectorAll(".js-plotly-plot .main-svg").length > 0
    ? document.querySelectorAll(".js-plotly-plot").length : 0);
});
</script>
"""


def curves(runs: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Mean validation metric per epoch (rows) for each candidate (columns) at one batch size.

    `runs` is the study's `bln_search.results.trials_frame`.
    """
    runs = runs[(runs["batch_size"] == batch_size) & runs["state"].isin(["complete", "pruned"])]
    series = {}
    for candidate, group in runs.groupby("_candidate", sort=False):
        histories = [h for h in group["history"] if isinstance(h, list) and h]
        if histories:
            frame = pd.DataFrame(histories).T  # epochs x seeds, NaN where a run stopped early
            series[candidate] = frame.mean(axis=1)
    table = pd.DataFrame(series)
    table.index = range(1, len(table) + 1)
    table.index.name = "epoch"
    return table


def importance_study(
    study: optuna.Study, runs: pd.DataFrame, batch_size: int
) -> optuna.Study | None:
    """An in-memory study of the complete BLN trials at one batch size, for Optuna's importance tools."""
    numbers = runs[
        (runs["batch_size"] == batch_size)
        & (runs["state"] == "complete")
        & (runs["model"] == BLN_MODEL)
    ]["trial"]
    trials = [study.trials[int(n)] for n in numbers]
    if len({tuple(sorted(t.params.items())) for t in trials}) < 2:
        return None
    subset = optuna.create_study(direction=study.direction)
    subset.add_trials(trials)
    return subset


def _winners_table(study: optuna.Study, found: dict[int, pd.Series]) -> pd.DataFrame:
    metric, _ = study_metric(study)
    tested = study.user_attrs.get("test", {})
    rows = []
    for batch_size, row in found.items():
        config = StatisticsConfig(*(bool(row[f]) for f in FLAG_NAMES))
        std = row[f"{metric}_std"]
        entry = {
            "batch size": batch_size,
            "winner": config.label,
            metric: f"{row[metric]:.4f}" + ("" if pd.isna(std) else f" ± {std:.4f}"),
            "seeds": int(row["seeds"]),
        }
        for name, value in (tested.get(str(batch_size)) or {}).get("metrics", {}).items():
            entry[name] = f"{value:.4f}"
        rows.append(entry)
    return pd.DataFrame(rows)


_STYLE = """<style>
body{font-family:sans-serif;margin:1.5em auto;max-width:1180px;padding:0 1em;box-sizing:border-box}
.verdict{font-size:15px;line-height:1.45;max-width:75em}
.table-box{overflow-x:auto;max-width:100%;margin:0.5em 0 1.5em}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
td.label{text-align:left;font-family:monospace}
.figure{max-width:100%;overflow:hidden}
.note{color:#555;font-size:13px}
</style>"""


def leaderboard_html(group: pd.DataFrame, metric: str) -> str:
    """One batch size's leaderboard as an HTML table: flags as one label, mean ± std, `–` if empty."""
    std = f"{metric}_std"
    skip = {"batch_size", "model", "params", *FLAG_NAMES, std}
    rows = []
    for _, row in group.iterrows():
        cells = {"rank": row["rank"], "candidate": figures.candidate_of(row)}
        for column in group.columns:
            if column in skip or column == "rank" or column.startswith(PARAMS_PREFIX):
                continue
            value = row[column]
            if column == metric and not is_empty(value):
                value = f"{value:.4f}" + ("" if is_empty(row[std]) else f" ± {row[std]:.4f}")
            elif column == "p_value" and not is_empty(value):
                value = f"{value:.3g}"
            elif column == "duration_s" and not is_empty(value):
                value = f"{value:.1f}"
            elif isinstance(value, float) and not is_empty(value):
                value = f"{value:.4f}"
            cells[column.replace("_", " ")] = value
        rows.append(cells)
    return _table_html(pd.DataFrame(rows), label_column="candidate")


def _table_html(frame: pd.DataFrame, label_column: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for column, value in row.items():
            text = EMPTY if is_empty(value) else str(value)
            css = ' class="label"' if column == label_column else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-box"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure_html(figure, name: str) -> str:
    import plotly.io as pio

    inner = pio.to_html(
        figure, full_html=False, include_plotlyjs=False, config={"responsive": True}
    )
    return f'<div class="figure" data-figure="{name}">{inner}</div>'


def write_html(study: optuna.Study, output: Path) -> Path:
    """Writes the report page; returns its path."""
    from plotly.offline import get_plotlyjs

    metric, direction = study_metric(study)
    runs = trials_frame(study)
    board = leaderboard(study, runs=runs)
    found = winners(study, board)
    if board.empty or not found:
        raise SearchFailed(f"study {study.study_name!r} has no complete trial to report on yet")
    sizes = sorted(int(b) for b in board["batch_size"].unique())
    effects = {b: flag_effects(runs, b) for b in sizes}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>bln-search report: {html.escape(study.study_name)}</title>",
        f"<script>{get_plotlyjs()}</script>",
        _STYLE,
        "</head><body>",
        _SELF_CHECK,
        f"<h1>bln-search: {html.escape(study.study_name)}</h1>",
        "<h2>Verdict</h2>",
        *(
            f'<p class="verdict">{html.escape(verdict(board, effects[b], b, metric, direction))}</p>'
            for b in sizes
        ),
        f'<p class="note">Ranked by {html.escape(metric)} ({direction}); a run\'s value is its '
        "best epoch, a configuration's the mean over seeds. <em>Tie</em>: Welch's t-test against "
        "the winner over seeds at 5%. Flag effects pool every run with the flag off (or on).</p>",
        "<h2>Winners by batch size</h2>",
        _table_html(_winners_table(study, found), label_column="winner"),
    ]
    for batch_size in sizes:
        group = board[board["batch_size"] == batch_size]
        parts.append(f"<h2>Batch size {batch_size}</h2>")
        parts.append(
            _figure_html(figures.ranked_figure(group, metric, batch_size), f"ranked-{batch_size}")
        )
        if not effects[batch_size].empty:
            figure = figures.effects_figure(effects[batch_size], metric, batch_size)
            parts.append(_figure_html(figure, f"effects-{batch_size}"))
        subset = (
            None if complete_grid(runs, batch_size) else importance_study(study, runs, batch_size)
        )
        if subset is not None:
            figure = optuna.visualization.plot_param_importances(subset)
            figure.update_layout(
                title=f"Batch size {batch_size}: fANOVA importance of the flags "
                "(the grid is incomplete, so the on/off means compare unequal sets)"
            )
            parts.append(_figure_html(figure, f"importance-{batch_size}"))
        roles = {figures.candidate_of(r): figures.role_of(r) for _, r in group.iterrows()}
        table = curves(runs, batch_size)
        if not table.empty:
            figure = figures.curves_figure(table, roles, metric, batch_size)
            parts.append(_figure_html(figure, f"curves-{batch_size}"))
        parts.append(leaderboard_html(group, metric))
    parts.append("</body></html>")
    output = Path(output)
    output.write_text("\n".join(parts), encoding="utf-8")
    return output


def write_pngs(study: optuna.Study, output: Path) -> list[Path]:
    """The same figures as PNG files next to `output` (matplotlib, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, _ = study_metric(study)
    output = Path(output)
    runs = trials_frame(study)
    board = leaderboard(study, runs=runs)
    written = []

    def path(kind: str, batch_size: int) -> Path:
        written.append(output.with_name(f"{output.stem}-{kind}-bs{batch_size}.png"))
        return written[-1]

    for batch_size in sorted(winners(study, board)):
        group = board[board["batch_size"] == batch_size]
        figures.ranked_png(group, metric, batch_size, path("ranked", batch_size))
        effects = flag_effects(runs, batch_size)
        if not effects.empty:
            figures.effects_png(effects, metric, batch_size, path("effects", batch_size))
        subset = (
            None if complete_grid(runs, batch_size) else importance_study(study, runs, batch_size)
        )
        if subset is not None:
            axes = optuna.visualization.matplotlib.plot_param_importances(subset)
            axes.set_title(f"Batch size {batch_size}: fANOVA importance (incomplete grid)")
            axes.figure.savefig(path("importance", batch_size), dpi=110, bbox_inches="tight")
            plt.close(axes.figure)
        roles = {figures.candidate_of(r): figures.role_of(r) for _, r in group.iterrows()}
        table = curves(runs, batch_size)
        if not table.empty:
            figures.curves_png(table, roles, metric, batch_size, path("curves", batch_size))
    return written
