"""The four statistics flags of a BLN layer, as plain data.

This module imports no TensorFlow, so the CLI can enumerate, print and validate
configurations instantly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass

FLAG_NAMES: tuple[str, ...] = (
    "batch_moving_mean",
    "batch_moving_var",
    "feature_moving_mean",
    "feature_moving_var",
)
"""The four inference flags, in the order the paper lists them."""


class ConfigError(ValueError):
    """A statistics configuration (or a document holding one) is invalid."""


@dataclass(frozen=True)
class StatisticsConfig:
    """Which statistics a BLN layer uses at inference.

    Each flag is `True` to use the population (moving) statistic gathered during
    training and `False` to use the statistic of the current batch. The
    defaults are the published ones.
    """

    batch_moving_mean: bool = True
    batch_moving_var: bool = True
    feature_moving_mean: bool = False
    feature_moving_var: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> StatisticsConfig:
        """Builds a config from a mapping that holds exactly the four flags as booleans."""
        if isinstance(values, StatisticsConfig):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"a statistics configuration must be a mapping of the four flags, got {type(values).__name__}"
            )
        missing = [name for name in FLAG_NAMES if name not in values]
        unknown = sorted(set(values) - set(FLAG_NAMES))
        if missing:
            raise ConfigError(f"statistics configuration is missing flag(s): {', '.join(missing)}")
        if unknown:
            raise ConfigError(f"statistics configuration has unknown key(s): {', '.join(unknown)}")
        not_bool = [name for name in FLAG_NAMES if not isinstance(values[name], bool)]
        if not_bool:
            raise ConfigError(
                f"statistics flag(s) must be true or false: {', '.join(f'{n}={values[n]!r}' for n in not_bool)}"
            )
        return cls(**{name: values[name] for name in FLAG_NAMES})

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @property
    def label(self) -> str:
        """A compact name such as `BM BV -- --`: population statistics shown, batch ones dashed."""
        short = ("BM", "BV", "FM", "FV")
        return " ".join(s if getattr(self, n) else "--" for s, n in zip(short, FLAG_NAMES))


def all_configurations() -> list[StatisticsConfig]:
    """The 16 configurations, in a fixed order (all batch statistics first)."""
    return [StatisticsConfig(*flags) for flags in itertools.product((False, True), repeat=4)]
