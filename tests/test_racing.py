"""Racing a shared training's configurations, and stopping a training that stopped improving."""

from __future__ import annotations

import optuna
import pytest

import bln_search
from bln_search.racing import RacingPruner
from bln_search.trials import ATTR_EPOCHS_TRAINED, ATTR_STOPPED, ATTR_TRAINING
from tests.fixtures import models

PRUNED = optuna.trial.TrialState.PRUNED


def race(curves: list[list[float]], pruner: RacingPruner) -> dict[int, int]:
    """Runs known curves through the pruner as a shared training does: every live
    configuration reports an epoch, then each is asked whether to prune.
    Returns {configuration: epoch it was pruned at}."""
    study = optuna.create_study(direction="minimize", pruner=pruner)
    trials = [study.ask() for _ in curves]
    for trial in trials:
        trial.set_user_attr(ATTR_TRAINING, "t1")
    pruned = {}
    for step in range(len(curves[0])):
        live = [i for i in range(len(curves)) if i not in pruned]
        for i in live:
            trials[i].report(curves[i][step], step)
        for i in live:
            if trials[i].should_prune():
                study.tell(trials[i], state=PRUNED)
                pruned[i] = step + 1
    return pruned


def test_the_race_halves_the_field_at_each_rung_and_keeps_the_leader():
    # Configuration i has loss i + 1 at every epoch, shifted down each epoch: order known.
    curves = [[i + 1.0 - 0.01 * epoch for epoch in range(8)] for i in range(16)]
    pruned = race(curves, RacingPruner(warmup_epochs=2, interval=2, min_live=2))
    # Rung at epoch 2: 8 worse than the median go; at 4: 4 more; at 6: 2 more; then 2 are left.
    assert {i: e for i, e in pruned.items() if e == 2} == {i: 2 for i in range(8, 16)}
    assert {i: e for i, e in pruned.items() if e == 4} == {i: 4 for i in range(4, 8)}
    assert {i: e for i, e in pruned.items() if e == 6} == {i: 6 for i in range(2, 4)}
    assert 0 not in pruned and 1 not in pruned


def test_the_race_judges_at_the_rung_not_before():
    # The eventual winner starts worst: it survives the warm-up and wins the first rung.
    curves = [[5.0, 0.5, 0.5, 0.5]] + [[1.0 + i, 1.0 + i, 1.0 + i, 1.0 + i] for i in range(3)]
    pruned = race(curves, RacingPruner(warmup_epochs=2, interval=2, min_live=1))
    assert 0 not in pruned and pruned == {2: 2, 3: 2, 1: 4}


def test_racing_is_the_shared_default_and_prunes_inside_the_first_training(data, storage):
    study = bln_search.search(
        models.build, data, study_name="race", storage=storage, epochs=6, pruner="auto"
    )
    states = [t.state for t in study.trials]
    # Rungs at epochs 2 and 4; none at the last epoch (6), where pruning saves nothing.
    assert states.count(PRUNED) == 12 and states.count(optuna.trial.TrialState.COMPLETE) == 4
    pruned_at = sorted(t.user_attrs[ATTR_EPOCHS_TRAINED] for t in study.trials if t.state == PRUNED)
    assert pruned_at == [2] * 8 + [4] * 4
    board = bln_search.leaderboard(study)
    assert list(board["state"][:4]) == ["complete"] * 4


def test_racing_with_several_seeds_or_per_trial_is_refused(data, storage):
    for kwargs in ({"seeds": 2}, {"strategy": "per-trial"}):
        with pytest.raises(bln_search.BLNSearchError, match="racing pruner races"):
            bln_search.search(
                models.build, data, study_name="r", storage=storage, pruner="racing", **kwargs
            )


def test_a_training_stops_after_patience_epochs_without_improvement(data, storage):
    study = bln_search.search(
        models.build_still,
        data,
        study_name="still",
        storage=storage,
        epochs=20,
        batch_size=96,  # one batch per epoch: the same statistics, the same loss every epoch
        patience=2,
        pruner=None,
    )
    assert {t.user_attrs[ATTR_EPOCHS_TRAINED] for t in study.trials} == {3}
    assert {t.user_attrs[ATTR_STOPPED] for t in study.trials} == {
        "no configuration improved for 2 epochs"
    }
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
