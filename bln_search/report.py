"""`bln-search report`: one self-contained HTML page (plotly, with optuna.visualization), or PNGs.

Per batch size: the validation curve of every configuration and baseline (mean
over seeds per epoch), the flags' importance (Optuna's fANOVA evaluator), the
leaderboard, and the winners with their test metric when one was measured.
plotly.js is inlined once, so the page works offline.
"""

from __future__ import annotations

import html
from pathlib import Path

import optuna
import pandas as pd

from bln_search.config import FLAG_NAMES, StatisticsConfig
from bln_search.errors import SearchFailed
from bln_search.results import BLN_MODEL, leaderboard, study_metric, trials_frame, winners

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


def _curve_figure(table: pd.DataFrame, metric: str, batch_size: int):
    import plotly.graph_objects as go

    figure = go.Figure()
    for candidate in table.columns:
        baseline = not _is_config_label(candidate)
        figure.add_trace(
            go.Scatter(
                x=list(table.index),
                y=table[candidate].tolist(),
                mode="lines+markers",
                name=candidate + (" (baseline)" if baseline else ""),
                line={"dash": "dash", "width": 3} if baseline else {"width": 1.5},
            )
        )
    figure.update_layout(
        title=f"Validation {metric} per epoch, batch size {batch_size} (mean over seeds)",
        xaxis_title="epoch",
        yaxis_title=metric,
        legend_title="configuration",
        height=480,
    )
    return figure


def _is_config_label(candidate: str) -> bool:
    return len(candidate.split()) == len(FLAG_NAMES)


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


def write_html(study: optuna.Study, output: Path) -> Path:
    """Writes the report page; returns its path."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    metric, direction = study_metric(study)
    runs = trials_frame(study)
    board = leaderboard(study, runs=runs)
    found = winners(study, board)
    if board.empty or not found:
        raise SearchFailed(f"study {study.study_name!r} has no complete trial to report on yet")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>bln-search report: {html.escape(study.study_name)}</title>",
        f"<script>{get_plotlyjs()}</script>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px} "
        "table{border-collapse:collapse;font-size:13px}"
        " td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}</style></head><body>",
        _SELF_CHECK,
        f"<h1>bln-search: {html.escape(study.study_name)}</h1>",
        f"<p>Ranked by {html.escape(metric)} ({direction}); a run's value is its best epoch. "
        "<em>vs winner</em>: Welch's t-test over seeds at 5%.</p>",
        "<h2>Winners by batch size</h2>",
        _winners_table(study, found).to_html(index=False, escape=True),
    ]
    for batch_size, group in board.groupby("batch_size"):
        parts.append(f"<h2>Batch size {int(batch_size)}</h2>")
        parts.append(
            pio.to_html(
                _curve_figure(curves(runs, int(batch_size)), metric, int(batch_size)),
                full_html=False,
                include_plotlyjs=False,
            )
        )
        subset = importance_study(study, runs, int(batch_size))
        if subset is not None:
            figure = optuna.visualization.plot_param_importances(subset)
            figure.update_layout(
                title=f"Importance of the flags for {metric}, batch size {int(batch_size)} (fANOVA)"
            )
            parts.append(pio.to_html(figure, full_html=False, include_plotlyjs=False))
        parts.append(
            group.drop(columns=["batch_size"]).to_html(
                index=False, na_rep="–", float_format=lambda v: f"{v:.4f}"
            )
        )
    parts.append("</body></html>")
    output = Path(output)
    output.write_text("\n".join(parts), encoding="utf-8")
    return output


def write_pngs(study: optuna.Study, output: Path) -> list[Path]:
    """The same figures as PNG files next to `output` (matplotlib, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric, _ = study_metric(study)
    output = Path(output)
    runs = trials_frame(study)
    written = []
    for batch_size in sorted(winners(study, leaderboard(study, runs=runs))):
        table = curves(runs, batch_size)
        figure, axes = plt.subplots(figsize=(9, 5))
        for candidate in table.columns:
            baseline = not _is_config_label(candidate)
            axes.plot(
                table.index,
                table[candidate],
                linestyle="--" if baseline else "-",
                linewidth=2.5 if baseline else 1.2,
                label=candidate,
            )
        axes.set(
            title=f"Validation {metric}, batch size {batch_size} (mean over seeds)",
            xlabel="epoch",
            ylabel=metric,
        )
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=7, ncol=2)
        path = output.with_name(f"{output.stem}-curves-bs{batch_size}.png")
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
        subset = importance_study(study, runs, batch_size)
        if subset is not None:
            axes = optuna.visualization.matplotlib.plot_param_importances(subset)
            path = output.with_name(f"{output.stem}-importance-bs{batch_size}.png")
            axes.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(axes.figure)
            written.append(path)
    return written
