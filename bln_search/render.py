"""Turning leaderboard DataFrames into terminal tables, CSV, JSON or Markdown."""

from __future__ import annotations

import math

import pandas as pd

from bln_search.config import FLAG_NAMES

FORMATS = ("table", "csv", "json", "markdown")

_STATE_STYLE = {"complete": "green", "pruned": "yellow", "failed": "red", "fail": "red", "running": "cyan"}


def to_text(frame: pd.DataFrame, fmt: str) -> str:
    """CSV, JSON (records) or Markdown text of a leaderboard."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=2) + "\n"
    if fmt == "markdown":
        return frame.to_markdown(index=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cell(value, column) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if column == "duration_s" else f"{value:.4f}"
    return str(value)


_HEADERS = {"best_epoch": "best ep.", "epochs": "epochs", "duration_s": "time (s)"}


def rich_table(frame: pd.DataFrame, title: str | None = None):
    """A compact rich Table: the four flags shown as one `statistics` column.

    `BM BV FM FV` name the statistics taken from the population (batch mean,
    batch variance, feature mean, feature variance); `--` means the current batch.
    """
    from rich.table import Table

    from bln_search.config import StatisticsConfig

    table = Table(title=title, title_justify="left", caption="BM/BV/FM/FV: population batch mean/var, feature mean/var; --: current batch", caption_justify="left")
    others = [c for c in frame.columns if c not in FLAG_NAMES]
    for column in others:
        table.add_column(_HEADERS.get(column, column), justify="left" if column == "state" else "right", no_wrap=True)
        if column == "trial":
            table.add_column("statistics", justify="center", no_wrap=True)
    for _, row in frame.iterrows():
        label = StatisticsConfig(*(bool(row[f]) for f in FLAG_NAMES)).label if set(FLAG_NAMES) <= set(frame.columns) else ""
        cells = []
        for column in others:
            if column == "state":
                state = str(row[column])
                cells.append(f"[{_STATE_STYLE.get(state, 'white')}]{state}[/]")
            else:
                cells.append(_cell(row[column], column))
            if column == "trial":
                cells.append(f"[cyan]{label}[/]")
        rank = row.get("rank")
        table.add_row(*cells, style="bold" if pd.notna(rank) and rank == 1 else None)
    return table
