"""bln-search: find the best statistics configuration of Batch Layer Normalization.

The public names are loaded lazily, so `import bln_search` (and the CLI's
`--help`) does not import TensorFlow until a layer or a search is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BatchLayerNormalization": "bln_search.layer",
    "ResetPopulationStatistics": "bln_search.layer_tools",
    "configure": "bln_search.layer_tools",
    "find_bln_layers": "bln_search.layer_tools",
    "grouped_inference": "bln_search.layer_tools",
    "StatisticsConfig": "bln_search.config",
    "ConfigError": "bln_search.errors",
    "FLAG_NAMES": "bln_search.config",
    "all_configurations": "bln_search.config",
    "load_config": "bln_search.config",
    "training_plan": "bln_search.config",
    "BLNSearchError": "bln_search.errors",
    "SearchInterrupted": "bln_search.errors",
    "search": "bln_search.searching",
    "SearchObserver": "bln_search.observer",
    "Data": "bln_search.loading",
    "check_data": "bln_search.loading",
    "leaderboard": "bln_search.results",
    "export_document": "bln_search.results",
    "train": "bln_search.training",
    "trained_model": "bln_search.checkpoints",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bln_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
