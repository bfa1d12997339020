"""How configurations are trained: one training per trial, or one training shared by many.

Adding a strategy is one module with a `Strategy` subclass (`_base.py`) and one
entry in `STRATEGIES`; the automatic choice and the CLI's choices derive from
that list. The classes load on first use, so the CLI can list the names
without importing Optuna.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bln_search.errors import UsageError

if TYPE_CHECKING:
    from bln_search.strategies._base import Strategy

AUTO = "auto"

STRATEGIES: dict[str, str] = {
    "shared": "bln_search.strategies._shared:SharedStrategy",
    "per-trial": "bln_search.strategies._per_trial:PerTrialStrategy",
}
"""Strategy name -> its class; `auto` takes the first that can use the model factory."""


def get(name: str) -> type[Strategy]:
    """The strategy class called `name`."""
    if name not in STRATEGIES:
        raise UsageError(
            f"unknown strategy {name!r}; choose one of {', '.join([AUTO, *STRATEGIES])}"
        )
    module, _, attribute = STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def choose(name: str, model_factory: Callable[..., Any]) -> type[Strategy]:
    """The strategy called `name`; `auto` is the first that can use the factory.

    A factory with a `trial` parameter searches training hyper-parameters of
    its own, so it needs a strategy that builds it once per trial.
    """
    from bln_search.loading import takes_trial

    searches_training = takes_trial(model_factory)
    if name == AUTO:
        return next(
            get(n) for n in STRATEGIES if get(n).takes_trial_factory or not searches_training
        )
    strategy = get(name)
    if searches_training and not strategy.takes_trial_factory:
        usable = ", ".join(n for n in STRATEGIES if get(n).takes_trial_factory)
        raise UsageError(
            "the model factory takes a `trial` and so searches training hyper-parameters: "
            f"one training cannot be shared across trials, set `strategy` to {usable}"
        )
    return strategy
