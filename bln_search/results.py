"""Leaderboards and exports built from an Optuna study's trials (pandas, no TensorFlow)."""

from __future__ import annotations

import math

import optuna
import pandas as pd

from bln_search.config import FLAG_NAMES, config_document
from bln_search.errors import SearchFailed
from bln_search.engine import ATTR_BEST_EPOCH, ATTR_EPOCHS_TRAINED, ATTR_FAIL_REASON, ATTR_HISTORY, config_of

_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}


def study_metric(study: optuna.Study) -> tuple[str, str]:
    """(metric name, direction) the study ranks by."""
    return study.user_attrs.get("metric", "value"), study.direction.name.lower()


def _best_of(history, direction):
    if not isinstance(history, list) or not history:
        return math.nan
    return min(history) if direction == "minimize" else max(history)


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per configuration, best first.

    Complete trials rank by their value (the best epoch's metric), then pruned
    ones by the best epoch they reached; failed ones come last. Where a
    configuration ran more than once (a retried or interrupted trial), its best
    run is shown.
    """
    metric, direction = study_metric(study)
    columns = ["rank", "trial", *FLAG_NAMES, metric, "best_epoch", "epochs", "state", "duration_s"]
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "user_attrs"))
    if frame.empty:
        return pd.DataFrame(columns=columns)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    frame = frame[frame["state"].isin(list(_STATE_ORDER))].copy()
    frame["config"] = frame["number"].map(lambda n: config_of(trials[n]))
    reason = frame.get(f"user_attrs_{ATTR_FAIL_REASON}")
    if reason is not None:
        frame = frame[reason.ne("duplicate") | reason.isna()]
    frame = frame[frame["config"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    history = frame.get(f"user_attrs_{ATTR_HISTORY}", pd.Series([None] * len(frame), index=frame.index))
    frame[metric] = [
        value if state == "COMPLETE" else (_best_of(h, direction) if state != "FAIL" else math.nan)
        for value, state, h in zip(frame["value"], frame["state"], history)
    ]
    for flag in FLAG_NAMES:
        frame[flag] = frame["config"].map(lambda c, f=flag: getattr(c, f))
    frame["trial"] = frame["number"]
    frame["best_epoch"] = frame.get(f"user_attrs_{ATTR_BEST_EPOCH}", math.nan)
    frame["epochs"] = frame.get(f"user_attrs_{ATTR_EPOCHS_TRAINED}", math.nan)
    frame["duration_s"] = frame["duration"].dt.total_seconds().round(2)
    frame["_order"] = frame["state"].map(_STATE_ORDER)
    frame = frame.sort_values(["_order", metric], ascending=[True, direction == "minimize"], na_position="last")
    frame = frame.drop_duplicates("config", keep="first")
    frame["state"] = frame["state"].str.lower()
    ranked = frame["state"].isin(["complete", "pruned"])
    frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame.loc[ranked, "rank"] = range(1, int(ranked.sum()) + 1)
    for column in ("best_epoch", "epochs"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame[columns].reset_index(drop=True)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial (pruned trials did not finish, so they cannot win)."""
    try:
        return study.best_trial
    except ValueError:
        raise SearchFailed(f"study {study.study_name!r} has no complete trial yet") from None


def export_document(study: optuna.Study) -> dict:
    """The versioned JSON document of the study's best configuration."""
    trial = best_trial(study)
    metric, direction = study_metric(study)
    training = {key: study.user_attrs[key] for key in ("epochs", "batch_size", "seed", "model") if key in study.user_attrs}
    return config_document(
        config_of(trial),
        metric=metric,
        value=trial.value,
        direction=direction,
        study=study.study_name,
        trial=trial.number,
        extra={"training": training},
    )
