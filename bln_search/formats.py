"""Turning leaderboard DataFrames into terminal tables, CSV, JSON or Markdown.

pandas is imported inside the functions, so the CLI can list `FORMATS` instantly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bln_search.config import FLAG_NAMES

PARAMS_PREFIX = "params."
"""Leaderboard columns of a factory's own values, exact (the `params` column rounds them)."""

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "json", "markdown")

_STATE_STYLE = {
    "complete": "green",
    "pruned": "yellow",
    "failed": "red",
    "fail": "red",
    "running": "cyan",
}


EMPTY = "–"
"""How an empty cell reads to people (terminal, Markdown, HTML): a baseline's flags, one seed's std."""


def to_text(frame: pd.DataFrame, fmt: str) -> str:
    """CSV, JSON (records) or Markdown text of a leaderboard.

    Empty cells (a baseline's flags, the std or p-value of a single seed, no
    verdict) are an empty field in CSV, so every CSV reader sees a missing
    value rather than a string; `null` in JSON; `–` in Markdown.
    """
    import json

    frame = blank_empty(frame)
    if fmt == "csv":
        return frame.to_csv(index=False, na_rep="")
    if fmt == "json":
        # pandas escapes "/" ("n\/a"); read its output back and write it plainly.
        records = json.loads(frame.to_json(orient="records"))
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        shown = frame.astype(object).map(
            lambda v: EMPTY if is_empty(v) else (f"{v:.6g}" if isinstance(v, float) else v)
        )
        return shown.to_markdown(index=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def blank_empty(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with empty strings as missing values (NaN/NA), so each format shows them one way."""
    return frame.mask(frame.astype(object).eq(""))


def is_empty(value) -> bool:
    import pandas as pd

    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or value == ""
        or (isinstance(value, float) and math.isnan(value))
    )


def _cell(value, column) -> str:
    if is_empty(value):
        return EMPTY
    if isinstance(value, float):
        return f"{value:.2f}" if column == "duration_s" else f"{value:.4f}"
    return str(value)


_HEADERS = {
    "best_epoch": "best ep.",
    "epochs": "epochs",
    "duration_s": "time (s)",
    "vs_winner": "vs winner",
    "p_value": "p",
}
_VERDICT_STYLE = {
    "winner": "bold green",
    "tie": "yellow",
    "worse": "dim",
    "better": "magenta",
    "n/a": "dim",
}
_HIDDEN = {*FLAG_NAMES, "model", "batch_size"}  # and the exact `params.<name>` columns
# What a narrow terminal keeps, most telling first: `rank` (with `statistics`), the ranked
# metric, these, the other columns (other metrics, a factory's params), then the last ones.
_KEPT_FIRST = ("vs_winner", "state")
_KEPT_LAST = ("p_value", "best_epoch", "seeds", "epochs", "trial", "duration_s")


def rich_table(frame: pd.DataFrame, title: str | None = None, width: int | None = None):
    """A compact rich Table of one batch size's leaderboard.

    The four flags show as one `statistics` column: `BM BV FM FV` name the
    statistics taken from the population (batch mean, batch variance, feature
    mean, feature variance), `--` the current batch; baselines show their
    normalization there instead. With several seeds the metric reads
    `mean ± std`.

    With a `width` (the terminal's), columns that would not fit whole are left
    out, least telling first (time, trial, epochs, seeds, best epoch, p, then
    the other metrics), and the caption names them: rich would otherwise
    squeeze every column, headers and values alike, into `…`.
    """
    std_columns = {c for c in frame.columns if c.endswith("_std")}
    several_seeds = "seeds" in frame.columns and (frame["seeds"] > 1).any()
    shown = [
        c
        for c in frame.columns
        if c not in _HIDDEN and c not in std_columns and not c.startswith(PARAMS_PREFIX)
    ]
    if not several_seeds:
        shown = [c for c in shown if c not in ("seeds", "vs_winner", "p_value")]
    else:  # room for mean ± std and the verdict; the rest is in --format csv/json
        shown = [c for c in shown if c not in ("epochs", "trial", "duration_s")]
    if width is None:
        return _table(frame, shown, title, several_seeds)
    ranked = [c for c in shown if f"{c}_std" in frame.columns]
    first = ["rank", *ranked, *_KEPT_FIRST]
    by_importance = [
        *(c for c in first if c in shown),
        *(c for c in shown if c not in first and c not in _KEPT_LAST),
        *(c for c in _KEPT_LAST if c in shown),
    ]
    kept: list[str] = []
    for column in by_importance:
        trying = [c for c in shown if c in kept or c == column]
        needed = natural_width(_table(frame, trying, title, several_seeds))
        if needed <= width or not kept:
            kept.append(column)
    left_out = [c for c in shown if c not in kept]
    return _table(frame, [c for c in shown if c in kept], title, several_seeds, left_out)


def natural_width(table) -> int:
    """The columns `table` needs to show every cell whole (rich squeezes it into fewer).

    A terminal narrower than even the rank, the statistics and the ranked metric
    prints the table at this width instead, its lines wrapped by the terminal
    rather than its cells cut: a cut `BM BV…` would name another configuration.
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


def _table(
    frame: pd.DataFrame,
    shown: list[str],
    title: str | None,
    several_seeds: bool,
    left_out: list[str] | None = None,
):
    import pandas as pd
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from bln_search.config import StatisticsConfig

    caption = "BM/BV/FM/FV: population batch mean/var, feature mean/var; --: current batch"
    if "vs_winner" in shown and frame["vs_winner"].isin(["tie", "worse", "better"]).any():
        caption += "; vs winner: Welch's t-test over seeds at 5%"
    if left_out:
        names = ", ".join(_HEADERS.get(c, c) for c in left_out)
        caption += f"; too narrow for {names} (see --format csv)"
    table = Table(
        title=title, title_justify="left", caption=escape(caption), caption_justify="left"
    )
    for column in shown:
        table.add_column(
            Text(_HEADERS.get(column, column)),  # a metric's name is the user's text
            justify="left" if column in ("state", "vs_winner") else "right",
            no_wrap=True,
        )
        if column == "rank":
            table.add_column("statistics", justify="center", no_wrap=True)
    for _, row in frame.iterrows():
        model = row.get("model", "BLN")
        if model != "BLN" and pd.notna(model):
            label = f"[magenta]{escape(str(model))}[/]"
        elif set(FLAG_NAMES) <= set(frame.columns):
            label = f"[cyan]{StatisticsConfig.from_row(row).label}[/]"
        else:
            label = ""
        cells = []
        for column in shown:
            value = row[column]
            if column == "state":
                cells.append(f"[{_STATE_STYLE.get(str(value), 'white')}]{value}[/]")
            elif column == "vs_winner":
                cells.append(
                    f"[{_VERDICT_STYLE.get(str(value), 'white')}]{value}[/]"
                    if not is_empty(value)
                    else EMPTY
                )
            elif (
                f"{column}_std" in frame.columns
                and several_seeds
                and pd.notna(row[f"{column}_std"])
            ):
                cells.append(f"{_cell(value, column)} ± {_cell(row[f'{column}_std'], column)}")
            elif column == "p_value":
                cells.append(EMPTY if is_empty(value) else f"{value:.3f}")
            else:
                cells.append(escape(_cell(value, column)))
            if column == "rank":
                cells.append(label)
        rank = row.get("rank")
        table.add_row(*cells, style="bold" if pd.notna(rank) and rank == 1 else None)
    return table
