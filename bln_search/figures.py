"""The report's figures, in plotly (the HTML page) and matplotlib (the PNGs).

Every figure is built from one batch size's leaderboard rows, `flag_effects`
or `curves`, so the pictures show the same numbers as the tables. Roles give
the styles: the winner and the configurations tied with it stand out, the
baselines have their own marker and dash, the rest is muted grey.
"""

from __future__ import annotations

import math

import pandas as pd

from bln_search.config import StatisticsConfig
from bln_search.results import BLN_MODEL

ROLES = ("winner", "tied with the winner", "baseline", "other configuration")
_COLOUR = {
    "winner": "#1a9850",
    "tied with the winner": "#f46d43",
    "baseline": "#7b3294",
    "other configuration": "#9e9e9e",
}
_SYMBOL = {
    "winner": "star",
    "tied with the winner": "circle",
    "baseline": "diamond",
    "other configuration": "circle-open",
}
_MPL_MARKER = {
    "winner": "*",
    "tied with the winner": "o",
    "baseline": "D",
    "other configuration": ".",
}
# Distinct colours and dashes for the highlighted curves (never the muted grey).
_PALETTE = ["#000000", "#d73027", "#4575b4", "#f46d43", "#762a83", "#01665e", "#e08214", "#c51b7d"]
_DASHES = [("solid", "-"), ("dash", "--"), ("dot", ":"), ("dashdot", "-.")]


def candidate_of(row) -> str:
    """The name a leaderboard row has in `trials_frame`'s `_candidate` (and on the figures)."""
    name = StatisticsConfig.from_row(row).label if row["model"] == BLN_MODEL else str(row["model"])
    params = row.get("params")
    return f"{name} {params}" if isinstance(params, str) and params else name


def role_of(row) -> str:
    if row["model"] != BLN_MODEL:
        return "baseline"
    return {"winner": "winner", "tie": "tied with the winner"}.get(
        row["vs_winner"], "other configuration"
    )


def ranked(group: pd.DataFrame, metric: str) -> pd.DataFrame:
    """label, mean, std and role of every ranked row of one batch size's leaderboard, best first."""
    rows = group[group[metric].notna()]
    return pd.DataFrame(
        {
            "label": [candidate_of(r) for _, r in rows.iterrows()],
            "mean": rows[metric].astype(float).tolist(),
            "std": rows[f"{metric}_std"].astype(float).fillna(0.0).tolist(),
            "role": [role_of(r) for _, r in rows.iterrows()],
        }
    )


def _epoch_axis(epochs: int) -> dict:
    return {"tickmode": "linear", "tick0": 1, "dtick": max(1, math.ceil(epochs / 12))}


# -- plotly ---------------------------------------------------------------------------------


def ranked_figure(group: pd.DataFrame, metric: str, batch_size: int):
    import plotly.graph_objects as go

    table = ranked(group, metric)
    figure = go.Figure()
    for role in ROLES:
        part = table[table["role"] == role]
        if part.empty:
            continue
        figure.add_trace(
            go.Scatter(
                x=part["mean"],
                y=part["label"],
                mode="markers",
                name=role,
                marker={"color": _COLOUR[role], "symbol": _SYMBOL[role], "size": 11},
                error_x={"type": "data", "array": part["std"], "thickness": 1.5},
            )
        )
    figure.update_layout(
        title=f"Batch size {batch_size}: {metric}, mean ± std over seeds, best at the top",
        xaxis_title=metric,
        yaxis={
            "categoryorder": "array",
            "categoryarray": list(table["label"])[::-1],
            "automargin": True,
        },
        legend={"orientation": "h", "y": -0.15},
        height=max(300, 160 + 24 * len(table)),
        margin={"t": 60},
    )
    return figure


def effects_figure(effects: pd.DataFrame, metric: str, batch_size: int):
    import plotly.graph_objects as go

    figure = go.Figure()
    positions = list(range(len(effects)))
    for offset, side, symbol in ((-0.15, "off", "circle-open"), (0.15, "on", "circle")):
        figure.add_trace(
            go.Scatter(
                x=effects[side],
                y=[p + offset for p in positions],
                mode="markers",
                name=f"flag {side}",
                marker={
                    "size": 11,
                    "symbol": symbol,
                    "color": "#4575b4" if side == "on" else "#d73027",
                },
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": (effects[f"{side}_high"] - effects[side]).fillna(0),
                    "arrayminus": (effects[side] - effects[f"{side}_low"]).fillna(0),
                },
            )
        )
    figure.update_layout(
        title=f"Batch size {batch_size}: mean {metric} with each flag off and on (95% interval)",
        xaxis_title=f"{metric} (mean over the other flags and seeds)",
        yaxis={
            "tickmode": "array",
            "tickvals": positions,
            "ticktext": list(effects["flag"]),
            "automargin": True,
            "autorange": "reversed",
        },
        legend={"orientation": "h", "y": -0.2},
        height=360,
    )
    return figure


def curves_figure(table: pd.DataFrame, roles: dict, metric: str, batch_size: int):
    """`table`: `report.curves`; `roles`: {candidate: role}. Highlighted curves first in the legend."""
    import plotly.graph_objects as go

    figure = go.Figure()
    muted_shown = False
    for index, (candidate, role) in enumerate(_ordered(table, roles)):
        if role == "other configuration":
            line = {"color": _COLOUR[role], "width": 1}
            extra = {"legendgroup": "muted", "showlegend": not muted_shown, "opacity": 0.45}
            name = "other configurations" if not muted_shown else candidate
            muted_shown = True
        else:
            dash = _DASHES[index % len(_DASHES)][0] if role != "winner" else "solid"
            colour = _COLOUR["winner"] if role == "winner" else _PALETTE[index % len(_PALETTE)]
            line = {"color": colour, "width": 4 if role == "winner" else 2}
            line["dash"] = "dash" if role == "baseline" else dash
            extra = {}
            name = f"{candidate} ({role})"
        figure.add_trace(
            go.Scatter(
                x=list(table.index),
                y=table[candidate].tolist(),
                mode="lines+markers" if role != "other configuration" else "lines",
                name=name,
                hovertext=candidate,
                line=line,
                **extra,
            )
        )
    figure.update_layout(
        title=f"Batch size {batch_size}: validation {metric} per epoch (mean over seeds)",
        xaxis={"title": "epoch", **_epoch_axis(len(table))},
        yaxis_title=metric,
        legend={"orientation": "h", "y": -0.2},
        height=520,
    )
    return figure


def _ordered(table: pd.DataFrame, roles: dict) -> list[tuple[str, str]]:
    """Muted curves first (drawn underneath), then baselines, ties and the winner on top."""
    rank = {role: i for i, role in enumerate(reversed(ROLES))}
    pairs = [(c, roles.get(c, "other configuration")) for c in table.columns]
    return sorted(pairs, key=lambda pair: rank[pair[1]])


# -- matplotlib -----------------------------------------------------------------------------


def ranked_png(group: pd.DataFrame, metric: str, batch_size: int, path) -> None:
    import matplotlib.pyplot as plt

    table = ranked(group, metric)
    figure, axes = plt.subplots(figsize=(8, 1.5 + 0.28 * len(table)))
    positions = {label: i for i, label in enumerate(table["label"])}
    for role in ROLES:
        part = table[table["role"] == role]
        if not part.empty:
            axes.errorbar(
                part["mean"],
                [positions[label] for label in part["label"]],
                xerr=part["std"],
                fmt=_MPL_MARKER[role],
                color=_COLOUR[role],
                markersize=9 if role == "winner" else 6,
                capsize=3,
                label=role,
            )
    axes.set_yticks(range(len(table)), table["label"], fontfamily="monospace", fontsize=8)
    axes.invert_yaxis()
    axes.set(title=f"Batch size {batch_size}: {metric}, mean ± std over seeds", xlabel=metric)
    axes.legend(fontsize=8, loc="best")
    _save(figure, path)


def effects_png(effects: pd.DataFrame, metric: str, batch_size: int, path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.2))
    for offset, side, marker, colour in (
        (-0.15, "off", "o", "#d73027"),
        (0.15, "on", "s", "#4575b4"),
    ):
        low = (effects[side] - effects[f"{side}_low"]).fillna(0)
        high = (effects[f"{side}_high"] - effects[side]).fillna(0)
        axes.errorbar(
            effects[side],
            [i + offset for i in range(len(effects))],
            xerr=[low, high],
            fmt=marker,
            color=colour,
            capsize=3,
            label=f"flag {side}",
        )
    axes.set_yticks(range(len(effects)), effects["flag"])
    axes.invert_yaxis()
    axes.set(
        title=f"Batch size {batch_size}: mean {metric}, each flag off and on (95% interval)",
        xlabel=metric,
    )
    axes.legend(fontsize=8)
    _save(figure, path)


def curves_png(table: pd.DataFrame, roles: dict, metric: str, batch_size: int, path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(9, 5))
    muted_shown = False
    for index, (candidate, role) in enumerate(_ordered(table, roles)):
        if role == "other configuration":
            axes.plot(
                table.index,
                table[candidate],
                color=_COLOUR[role],
                linewidth=0.8,
                alpha=0.5,
                label=None if muted_shown else "other configurations",
            )
            muted_shown = True
            continue
        style = "--" if role == "baseline" else ("-" if role == "winner" else _DASHES[index % 4][1])
        axes.plot(
            table.index,
            table[candidate],
            linestyle=style,
            color=_COLOUR["winner"] if role == "winner" else _PALETTE[index % len(_PALETTE)],
            linewidth=2.6 if role == "winner" else 1.8,
            marker=_MPL_MARKER[role],
            label=f"{candidate} ({role})",
        )
    axes.set(
        title=f"Batch size {batch_size}: validation {metric} (mean over seeds)",
        xlabel="epoch",
        ylabel=metric,
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, path)


def _save(figure, path) -> None:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
