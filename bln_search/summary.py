"""The answer in numbers and words: each flag's effect, and a verdict per batch size.

Both read the same frames as the leaderboard (`bln_search.results`), so the
report's sentences, figures and tables cannot disagree.
"""

from __future__ import annotations

import math

import pandas as pd

from bln_search.config import FLAG_NAMES, StatisticsConfig
from bln_search.results import BLN_MODEL
from bln_search.stats import ALPHA, welch_p_value

_NAMED_TIES = 5
"""At most this many tied configurations are named in a verdict; the ranked figure shows all."""


def flag_effects(runs: pd.DataFrame, batch_size: int, confidence: float = 0.95) -> pd.DataFrame:
    """One row per flag: the mean metric with the flag off and on, their intervals, the difference.

    Each side pools every complete BLN run (all seeds, all combinations of the
    other three flags) at `batch_size`; on a full grid both sides see the same
    combinations of the other flags, so the difference is the flag's main
    effect. `off_low`/`off_high` (and `on_…`) are a t-interval of the mean at
    `confidence`; `p_value` is Welch's test of on against off. `runs` is the
    study's `trials_frame`. Empty when a side has no run.
    """
    from scipy import stats

    runs = runs[
        (runs["batch_size"] == batch_size)
        & (runs["state"] == "complete")
        & (runs["model"] == BLN_MODEL)
    ]
    rows = []
    for flag in FLAG_NAMES:
        row = {"flag": flag}
        sides = {}
        for side, wanted in (("off", False), ("on", True)):
            values = [
                float(v)
                for v, c in zip(runs["value"], runs["config"])
                if c is not None and getattr(c, flag) == wanted and not math.isnan(v)
            ]
            sides[side] = values
            mean = sum(values) / len(values) if values else math.nan
            half = math.nan
            if len(values) > 1:
                sem = pd.Series(values).std(ddof=1) / math.sqrt(len(values))
                half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)
            row.update({side: mean, f"{side}_low": mean - half, f"{side}_high": mean + half})
            row[f"{side}_runs"] = len(values)
        if not sides["off"] or not sides["on"]:
            return pd.DataFrame()
        row["difference"] = row["on"] - row["off"]
        row["p_value"] = welch_p_value(sides["on"], sides["off"])
        rows.append(row)
    return pd.DataFrame(rows)


def complete_grid(runs: pd.DataFrame, batch_size: int) -> bool:
    """Whether all 16 configurations completed at `batch_size` (then fANOVA adds nothing to the effects)."""
    done = runs[
        (runs["batch_size"] == batch_size)
        & (runs["state"] == "complete")
        & (runs["model"] == BLN_MODEL)
    ]
    return len({c for c in done["config"] if c is not None}) == 2 ** len(FLAG_NAMES)


def _label(row) -> str:
    if row["model"] != BLN_MODEL:
        return str(row["model"])
    return StatisticsConfig.from_row(row).label


def verdict(
    board: pd.DataFrame,
    effects: pd.DataFrame,
    batch_size: int,
    metric: str,
    direction: str,
    alpha: float = ALPHA,
) -> str:
    """One paragraph: which configurations tie for best, how each baseline compares, which flags matter.

    `board` is the study's leaderboard (`bln_search.results.leaderboard`),
    `effects` the batch size's `flag_effects`.
    """
    group = board[board["batch_size"] == batch_size]
    found = group[group["vs_winner"] == "winner"]
    if found.empty:
        return f"At batch size {batch_size}, no BLN configuration has completed yet."
    winner = found.iloc[0]
    std = winner[f"{metric}_std"]
    spread = "" if pd.isna(std) else f" ± {std:.4f}"
    seeds = int(winner["seeds"])
    value = f"{metric} {winner[metric]:.4f}{spread} over {seeds} seed{'s' * (seeds != 1)}"
    bln = group[group["model"] == BLN_MODEL]
    ties = bln[bln["vs_winner"] == "tie"]
    if seeds < 2:
        sentences = [
            f"At batch size {batch_size}, {_label(winner)} is best ({value}); "
            "with one seed, ties with it cannot be tested"
        ]
    elif ties.empty:
        sentences = [
            f"At batch size {batch_size}, {_label(winner)} is best ({value}), "
            "ahead of every other configuration beyond the seeds' noise"
        ]
    else:
        names = [_label(r) for _, r in ties.iterrows()]
        if len(names) > _NAMED_TIES:  # the ranked figure lists them all
            names = names[: _NAMED_TIES - 1] + [f"{len(names) - _NAMED_TIES + 1} more"]
        names = ", ".join(names)
        sentences = [
            f"At batch size {batch_size}, {len(ties) + 1} configurations tie for best: "
            f"{_label(winner)} ({value}) and {names}"
        ]
    words = {"better": "is better than every BLN configuration", "worse": "is worse than the best"}
    for _, row in group[group["model"] != BLN_MODEL].iterrows():
        outcome, p = row["vs_winner"], row["p_value"]
        if outcome in words:
            sentences.append(f"{row['model']} {words[outcome]} (p = {p:.2g})")
        elif outcome == "tie":
            sentences.append(f"{row['model']} ties with the best (p = {p:.2g})")
        elif pd.notna(row[metric]):
            sentences.append(f"{row['model']} reaches {row[metric]:.4f}, untested (one seed)")
    sentences[0] += ". " + ("; ".join(sentences[1:]) + "." if sentences[1:] else "")
    paragraph = sentences[0].strip()
    if not effects.empty:
        paragraph += " " + _effects_sentence(effects, metric, direction, alpha)
    return paragraph


def _effects_sentence(effects: pd.DataFrame, metric: str, direction: str, alpha: float) -> str:
    clear, noise = [], []
    for _, row in effects.iterrows():
        if pd.notna(row["p_value"]) and row["p_value"] < alpha:
            better = (row["difference"] < 0) == (direction == "minimize")
            verb = "raises" if row["difference"] > 0 else "lowers"
            clear.append(
                f"turning {row['flag']} on {verb} {metric} by {abs(row['difference']):.4f} "
                f"({'better' if better else 'worse'}, p = {row['p_value']:.2g})"
            )
        else:
            noise.append(row["flag"])
    parts = []
    if clear:
        text = "; ".join(clear)
        parts.append(text[0].upper() + text[1:] + ".")
    if noise:
        which = "The other flags'" if clear else "The flags'"
        parts.append(f"{which} effects ({', '.join(noise)}) are within the seeds' noise.")
    return " ".join(parts)
