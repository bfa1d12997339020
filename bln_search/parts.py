"""Optuna samplers and pruners by name, for the CLI (the Python API takes the objects)."""

from __future__ import annotations

import optuna

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("median", "hyperband", "patient", "none")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler | None:
    """`None` stands for the grid: `bln_search.search` queues all 16 configurations itself."""
    if name == "grid":
        return None
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Pruners fed one value per epoch; the first 4 trials and the first epoch are never pruned."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if name == "patient":
        return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1), patience=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
