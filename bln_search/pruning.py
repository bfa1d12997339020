"""Optuna pruners by name: each is fed one value per epoch (step = epoch index).

Adding a pruner is one entry in `PRUNERS`; the CLI's choices derive from it.
`"auto"` is resolved by `bln_search.search` to the strategy's own default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bln_search.errors import UsageError

if TYPE_CHECKING:
    import optuna

AUTO = "auto"


def _median(epochs: int) -> optuna.pruners.BasePruner:
    """The first 4 trials and the first epoch are never pruned."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)


def _hyperband(epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))


def _patient(epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.PatientPruner(_median(epochs), patience=1)


def _racing(epochs: int) -> optuna.pruners.BasePruner:
    """Halves a shared training's live configurations every 2 epochs after the first 2."""
    from bln_search.racing import RacingPruner

    return RacingPruner(warmup_epochs=2, interval=2, min_live=2, epochs=epochs)


def _none(epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable] = {
    "median": _median,
    "hyperband": _hyperband,
    "patient": _patient,
    "racing": _racing,
    "none": _none,
}
"""Pruner name -> a function of the planned epochs that makes it."""


def make_pruner(name: str, epochs: int):
    """The pruner called `name`, set up for `epochs` epochs."""
    try:
        return PRUNERS[name](epochs)
    except KeyError:
        raise UsageError(
            f"unknown pruner {name!r}; choose one of {', '.join([AUTO, *PRUNERS])}"
        ) from None
