"""Optuna samplers by name (importing this module stays light: the CLI builds its choices from it).

Adding a sampler is one entry in `SAMPLERS`. The grid is not an Optuna sampler:
`bln_search.sources.GridSource` queues every configuration itself.
"""

from __future__ import annotations

from collections.abc import Callable

from bln_search.errors import UsageError

GRID = "grid"


def _tpe(seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable | None] = {GRID: None, "tpe": _tpe, "random": _random}
"""Sampler name -> a function of the seed that makes it (None for the grid)."""


def make_sampler(name: str, seed: int):
    """An Optuna sampler; `None` stands for the grid, which `bln_search.search` queues itself."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    factory = SAMPLERS[name]
    return None if factory is None else factory(seed)
