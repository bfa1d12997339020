"""Leaderboards and exports built from an Optuna study's trials (pandas, no TensorFlow).

A study may hold every configuration under several seeds, batch sizes and
baselines. The leaderboard has one row per (batch size, candidate), where a
candidate is a statistics configuration or a baseline; seeds are aggregated
into mean ± std, and each row says whether it is distinguishable from the
winner (`bln_search.stats`).
"""

from __future__ import annotations

import math

import optuna
import pandas as pd

from bln_search.baselines import BLN_LABEL, label_of
from bln_search.config import FLAG_NAMES, StatisticsConfig, config_document
from bln_search.errors import SearchFailed
from bln_search.formats import PARAMS_PREFIX
from bln_search.manifest import require_manifest
from bln_search.stats import ALPHA, mark_ties
from bln_search.trials import (
    ATTR_BEST_EPOCH,
    ATTR_EPOCHS_TRAINED,
    ATTR_FAIL_REASON,
    ATTR_HISTORY,
    ATTR_OTHER_METRICS,
    DUPLICATE,
    best_of,
    config_of,
    setup_of,
)

_STATE_ORDER = {"complete": 0, "pruned": 1, "running": 2, "fail": 3}
BLN_MODEL = BLN_LABEL


def study_metric(study: optuna.Study) -> tuple[str, str]:
    """(metric name, direction) the study ranks by, from its manifest.

    A study without one was not made by bln-search: its values need not be a
    metric of ours, nor its direction, so it is refused rather than ranked.
    """
    manifest = require_manifest(study)
    return manifest["metric"], manifest["direction"]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per run of a candidate under one seed and batch size.

    Where one ran more than once (a retried or interrupted trial) its best run
    is kept. `value` is the best epoch's metric: the trial's value if it
    completed, the best epoch it reached if it was pruned, NaN if it failed.
    """
    metric, direction = study_metric(study)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "user_attrs"))
    columns = [
        "trial",
        "state",
        "value",
        "model",
        "config",
        "seed",
        "batch_size",
        "best_epoch",
        "epochs",
        "duration_s",
        "history",
        "others",
        "params",
    ]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    frame["state"] = frame["state"].str.lower()
    frame = frame[frame["state"].isin(list(_STATE_ORDER))].copy()
    reason = frame.get(f"user_attrs_{ATTR_FAIL_REASON}")
    if reason is not None:
        frame = frame[reason.ne(DUPLICATE) | reason.isna()]
    setups = frame["number"].map(lambda n: setup_of(trials[n]))
    frame["config"] = frame["number"].map(lambda n: config_of(trials[n]))
    frame["model"] = [label_of(s.variant) if s is not None else BLN_MODEL for s in setups]
    frame = frame[frame["config"].notna() | frame["model"].ne(BLN_MODEL)].copy()
    if frame.empty:
        return pd.DataFrame(columns=columns)
    setups = frame["number"].map(lambda n: setup_of(trials[n]))
    frame["seed"] = [s.seed if s else study.user_attrs.get("seed", 0) for s in setups]
    frame["batch_size"] = [
        s.batch_size if s else study.user_attrs.get("batch_size") for s in setups
    ]
    history = frame.get(
        f"user_attrs_{ATTR_HISTORY}", pd.Series([None] * len(frame), index=frame.index)
    )
    frame["history"] = history
    frame["value"] = [
        value
        if state == "complete"
        else (best_of(h if isinstance(h, list) else [], direction) if state != "fail" else math.nan)
        for value, state, h in zip(frame["value"], frame["state"], history)
    ]
    frame["trial"] = frame["number"]
    frame["best_epoch"] = frame.get(f"user_attrs_{ATTR_BEST_EPOCH}", math.nan)
    frame["epochs"] = frame.get(f"user_attrs_{ATTR_EPOCHS_TRAINED}", math.nan)
    running = frame["state"].eq("running")
    for index in frame.index[running]:  # no curve stored yet: its latest reported epoch so far
        reported = trials[frame.at[index, "number"]].intermediate_values
        if reported:
            frame.at[index, "value"] = reported[max(reported)]
            frame.at[index, "epochs"] = len(reported)
    others = frame.get(f"user_attrs_{ATTR_OTHER_METRICS}", pd.Series(None, index=frame.index))
    frame["others"] = [
        {name: v[int(e) - 1] for name, v in o.items() if len(v) >= int(e)}
        if isinstance(o, dict) and not pd.isna(e)
        else {}
        for o, e in zip(others, frame["best_epoch"])
    ]
    # All NaT (nothing finished yet) leaves an object column without the .dt accessor.
    frame["duration_s"] = pd.to_timedelta(frame["duration"]).dt.total_seconds()
    frame["_order"] = frame["state"].map(_STATE_ORDER)
    # A factory's own searched values make another candidate of the same flags.
    # Keyed by the exact values: the shown text rounds them, and two runs of the same flags
    # at 0.012341 and 0.012344 are still two candidates.
    own = [
        {k: v for k, v in trials[n].params.items() if k not in FLAG_NAMES} for n in frame["number"]
    ]
    frame["params"] = [params_text(values) for values in own]
    frame["_own"] = own
    frame["_candidate"] = [
        (c.label if c is not None else m) + (f" {sorted(v.items())!r}" if v else "")
        for c, m, v in zip(frame["config"], frame["model"], own)
    ]
    frame = frame.sort_values(
        ["_order", "value"], ascending=[True, direction == "minimize"], na_position="last"
    )
    frame = frame.drop_duplicates(["_candidate", "seed", "batch_size"], keep="first")
    return frame[columns + ["_candidate", "_order", "_own"]].reset_index(drop=True)


def leaderboard(
    study: optuna.Study, alpha: float = ALPHA, runs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (batch size, configuration or baseline), best first within each batch size.

    `<metric>` is the mean over seeds of each run's best epoch (complete runs;
    pruned candidates by the epochs they reached), `<metric>_std` the standard
    deviation across seeds. `vs_winner` compares each row with the winner, the
    best BLN configuration, by Welch's t-test over seeds at `alpha`: `tie`
    (indistinguishable), `worse`, `better` (a baseline that beats BLN), or
    `n/a` with a single seed. Ranks: complete, then pruned, then running;
    failed rows come last, unranked. `runs`: the study's `trials_frame`, if
    the caller already has it.
    """
    metric, direction = study_metric(study)
    minimize = direction == "minimize"
    columns = [
        "rank",
        "batch_size",
        "model",
        *FLAG_NAMES,
        metric,
        f"{metric}_std",
        "seeds",
        "vs_winner",
        "p_value",
        "best_epoch",
        "epochs",
        "state",
        "trial",
        "duration_s",
    ]
    runs = trials_frame(study) if runs is None else runs
    if runs.empty:
        return pd.DataFrame(columns=columns)
    # The model's other validation metrics, at each run's ranked epoch (mean over seeds).
    others = sorted({name for found in runs["others"] for name in found})
    # A factory with values of its own: shown compactly in `params`, and exactly, one column
    # each (`params.<name>`), for CSV and JSON; the terminal table leaves those out.
    own_names = sorted({name for found in runs["_own"] for name in found})
    if own_names:
        at = columns.index("model") + 1 + len(FLAG_NAMES)
        columns[at:at] = ["params", *(f"{PARAMS_PREFIX}{name}" for name in own_names)]
    columns[columns.index(f"{metric}_std") + 1 : columns.index(f"{metric}_std") + 1] = others
    rows = []
    for (batch_size, candidate), group in runs.groupby(["batch_size", "_candidate"], sort=False):
        state_order = group["_order"].min()
        usable = group[group["_order"] == state_order]
        values = [v for v in usable["value"] if not (isinstance(v, float) and math.isnan(v))]
        best_run = usable.iloc[0]  # runs are sorted best first
        config = best_run["config"]
        rows.append(
            {
                "batch_size": int(batch_size),
                "model": best_run["model"],
                **{
                    flag: (getattr(config, flag) if config is not None else pd.NA)
                    for flag in FLAG_NAMES
                },
                metric: sum(values) / len(values) if values else math.nan,
                f"{metric}_std": pd.Series(values, dtype=float).std(ddof=1)
                if len(values) > 1
                else math.nan,
                **{
                    name: _mean([found[name] for found in usable["others"] if name in found])
                    for name in others
                },
                "params": best_run["params"],
                **{
                    f"{PARAMS_PREFIX}{name}": best_run["_own"].get(name, pd.NA)
                    for name in own_names
                },
                "seeds": len(values),
                "best_epoch": best_run["best_epoch"],
                "epochs": group["epochs"].max(),
                "state": next(s for s, o in _STATE_ORDER.items() if o == state_order),
                "trial": int(best_run["trial"]),
                "duration_s": round(float(group["duration_s"].sum()), 2),
                "_order": state_order,
                "_values": values,
                "_candidate": candidate,
            }
        )
    board = pd.DataFrame(rows)
    board = board.sort_values(
        ["batch_size", "_order", metric], ascending=[True, True, minimize], na_position="last"
    )
    board["rank"] = pd.array([pd.NA] * len(board), dtype="Int64")
    board["vs_winner"] = ""
    board["p_value"] = math.nan
    for _batch_size, group in board.groupby("batch_size", sort=False):
        ranked = group[group["state"].isin(["complete", "pruned"])]
        board.loc[ranked.index, "rank"] = range(1, len(ranked) + 1)
        complete_bln = group[(group["state"] == "complete") & (group["model"] == BLN_MODEL)]
        if complete_bln.empty:
            continue
        winner = complete_bln.index[0]
        samples = {i: board.at[i, "_values"] for i in group[group["state"] == "complete"].index}
        for index, (p, verdict) in mark_ties(samples, winner, alpha).items():
            if verdict == "worse":
                better = (
                    board.at[index, metric] < board.at[winner, metric]
                    if minimize
                    else board.at[index, metric] > board.at[winner, metric]
                )
                verdict = "better" if better else "worse"
            board.at[index, "vs_winner"] = verdict
            board.at[index, "p_value"] = p
    for column in ("best_epoch", "epochs"):
        board[column] = pd.to_numeric(board[column], errors="coerce").astype("Int64")
    return board[columns].reset_index(drop=True)


def params_text(params: dict) -> str:
    """A factory's own values, compactly: `learning_rate=0.0123, units=64`."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())
    )


def _mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def winners(study: optuna.Study, board: pd.DataFrame | None = None) -> dict[int, pd.Series]:
    """{batch size: the leaderboard row of the best complete BLN configuration}.

    `board`: the study's leaderboard, if the caller already has it.
    """
    board = leaderboard(study) if board is None else board
    found = {}
    for batch_size, group in board.groupby("batch_size"):
        best = group[(group["state"] == "complete") & (group["model"] == BLN_MODEL)]
        if not best.empty:
            found[int(batch_size)] = best.iloc[0]
    return found


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The trial of the best complete BLN configuration (by mean over seeds) at the first batch size."""
    found = winners(study)
    if not found:
        raise SearchFailed(f"study {study.study_name!r} has no complete trial yet")
    return study.trials[int(found[min(found)]["trial"])]


def export_document(study: optuna.Study) -> dict:
    """The versioned JSON document of the study's best configuration, per batch size too.

    `config` is the winner at the smallest batch size searched (the only one,
    usually), `params` its factory's own searched values; `by_batch_size` holds
    every batch size's winner with its mean, standard deviation, number of
    seeds, best epoch and own values (`bln_search.config.training_plan` reads
    them back).
    """
    found = winners(study)
    if not found:
        raise SearchFailed(f"study {study.study_name!r} has no complete trial yet")
    metric, direction = study_metric(study)
    training = {
        key: study.user_attrs[key]
        for key in ("epochs", "batch_size", "seed", "seeds", "model")
        if key in study.user_attrs
    }
    first = found[min(found)]
    trial = study.trials[int(first["trial"])]

    def entry(row):
        best = study.trials[int(row["trial"])]
        return {
            "config": StatisticsConfig.from_row(row).as_dict(),
            "value": float(row[metric]),
            "std": None if pd.isna(row[f"{metric}_std"]) else float(row[f"{metric}_std"]),
            "seeds": int(row["seeds"]),
            "trial": int(row["trial"]),
            "best_epoch": best.user_attrs.get(ATTR_BEST_EPOCH),
            "params": {k: v for k, v in best.params.items() if k not in FLAG_NAMES},
        }

    training["batch_size"] = min(found)
    training["best_epoch"] = trial.user_attrs.get(ATTR_BEST_EPOCH)
    # What `train` checks its factory's model against (bln_search.training.check_same_model).
    manifest = require_manifest(study)
    training["model_check"] = {
        **(manifest.get("model") or {}),
        "search_space": manifest.get("search_space"),
    }
    own = {k: v for k, v in trial.params.items() if k not in FLAG_NAMES}
    return config_document(
        config_of(trial),
        metric=metric,
        value=float(first[metric]),
        direction=direction,
        study=study.study_name,
        trial=trial.number,
        extra={
            "training": training,
            "by_batch_size": {str(b): entry(row) for b, row in sorted(found.items())},
            "params": own,
        },
    )
