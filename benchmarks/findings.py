"""Summarises the README's digits studies: winners, ties, baselines and convergence per batch size.

Produce the studies first (about 20 minutes on 2 cores), then summarise them:

    for m in cnn rnn; do
      bln-search run --model studies/digits_$m.py:build --baselines --seeds 3 --batch-sizes 1,25 \\
        --test load_test --storage sqlite:///findings.db
    done
    python benchmarks/findings.py sqlite:///findings.db

Prints one Markdown table: for each study and batch size, the BLN winner (validation loss,
mean ± std over seeds), how many of the other 15 configurations tie with it (Welch's t-test,
5 %), each baseline with its verdict against the winner, the validation loss after the first
epoch (convergence speed), and the winner's test accuracy. A second table shows, per flag, the
largest change of the mean metric that flipping it alone causes, with Optuna's fANOVA importance.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from bln_search.config import FLAG_NAMES, StatisticsConfig  # noqa: E402
from bln_search.report import curves  # noqa: E402
from bln_search.results import leaderboard, study_metric, trials_frame  # noqa: E402


def _mean_std(row, metric):
    std = row[f"{metric}_std"]
    return f"{row[metric]:.3f} ± {std:.3f}" if pd.notna(std) else f"{row[metric]:.3f}"


def summarise(study: optuna.Study) -> list[dict]:
    metric, _ = study_metric(study)
    runs = trials_frame(study)
    board = leaderboard(study, runs=runs)
    tested = study.user_attrs.get("test", {})
    rows = []
    for batch_size, group in board.groupby("batch_size"):
        bln = group[group["model"] == "BLN"]
        winner = bln[bln["vs_winner"] == "winner"].iloc[0]
        label = StatisticsConfig(*(bool(winner[f]) for f in FLAG_NAMES)).label
        first_epoch = curves(runs, int(batch_size)).iloc[0]
        row = {
            "study": study.study_name,
            "batch": int(batch_size),
            "BLN winner": f"`{label}`",
            metric: _mean_std(winner, metric),
            "ties": f"{int((bln['vs_winner'] == 'tie').sum())}/15",
            "epoch-1 loss BLN": f"{first_epoch[label]:.3f}",
        }
        for name in ("BatchNormalization", "LayerNormalization", "no normalization"):
            baseline = group[group["model"] == name]
            if not baseline.empty:
                b = baseline.iloc[0]
                short = {
                    "BatchNormalization": "BN",
                    "LayerNormalization": "LN",
                    "no normalization": "none",
                }[name]
                row[short] = f"{_mean_std(b, metric)} ({b['vs_winner']})"
                row[f"epoch-1 {short}"] = f"{first_epoch[name]:.3f}"
        accuracy = (tested.get(str(int(batch_size))) or {}).get("metrics", {}).get("test_accuracy")
        row["test acc. (winner)"] = "–" if accuracy is None else f"{accuracy:.3f}"
        rows.append(row)
    return rows


def flag_effects(study: optuna.Study) -> list[dict]:
    """Per batch size: the largest change of the mean metric from flipping one flag, and fANOVA importance."""
    from bln_search.report import importance_study

    metric, _ = study_metric(study)
    runs = trials_frame(study)
    board = leaderboard(study, runs=runs)
    rows = []
    for batch_size, group in board[board["model"] == "BLN"].groupby("batch_size"):
        means = {tuple(bool(r[f]) for f in FLAG_NAMES): r[metric] for _, r in group.iterrows()}
        importance = optuna.importance.get_param_importances(
            importance_study(study, runs, int(batch_size)),
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        )
        row = {"study": study.study_name, "batch": int(batch_size)}
        for i, flag in enumerate(FLAG_NAMES):
            flips = [abs(v - means[k[:i] + (not k[i],) + k[i + 1 :]]) for k, v in means.items()]
            row[flag] = f"{max(flips):.4f} ({importance.get(flag, 0.0):.2f})"
        rows.append(row)
    return rows


def main():
    storage = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///findings.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows, effects = [], []
    for summary in sorted(
        optuna.get_all_study_summaries(storage, include_best_trial=False),
        key=lambda s: s.study_name,
    ):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        rows += summarise(study)
        effects += flag_effects(study)
    print(pd.DataFrame(rows).to_markdown(index=False))
    print("\nLargest change of the mean metric from flipping one flag (fANOVA importance):\n")
    print(pd.DataFrame(effects).to_markdown(index=False))


if __name__ == "__main__":
    main()
