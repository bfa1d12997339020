"""The four statistics flags of a BLN layer, as plain data.

This module imports no TensorFlow, so the CLI can enumerate, print and validate
configurations instantly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC

from bln_search.errors import ConfigError

FLAG_NAMES: tuple[str, ...] = (
    "batch_moving_mean",
    "batch_moving_var",
    "feature_moving_mean",
    "feature_moving_var",
)
"""The four inference flags, in the order the paper lists them."""

__all__ = [
    "FLAG_NAMES",
    "ConfigError",
    "StatisticsConfig",
    "all_configurations",
    "config_document",
    "load_config",
    "parse_config_document",
]


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
                f"a statistics configuration must be a mapping of the four flags, got "
                f"{type(values).__name__}"
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
                "statistics flag(s) must be true or false: "
                + ", ".join(f"{n}={values[n]!r}" for n in not_bool)
            )
        return cls(**{name: values[name] for name in FLAG_NAMES})

    @classmethod
    def from_row(cls, row) -> StatisticsConfig:
        """The configuration of a leaderboard row (or any record holding the four flags, e.g. NumPy booleans)."""
        return cls(*(bool(row[name]) for name in FLAG_NAMES))

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


# --- The exported document: what `bln-search export` writes and `load_config` reads. ---

SCHEMA = "bln-search/best-config"
SCHEMA_VERSION = 1


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def config_document(
    config: StatisticsConfig,
    *,
    metric: str,
    value: float,
    direction: str,
    study: str,
    trial: int,
    extra: Mapping[str, object] | None = None,
) -> dict:
    """The versioned JSON document for one configuration (see `load_config`)."""
    from datetime import datetime

    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "config": config.as_dict(),
        "metric": {"name": metric, "value": value, "direction": direction},
        "study": study,
        "trial": trial,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            name: _version(dist)
            for name, dist in (
                ("bln_search", "bln-search"),
                ("keras", "keras"),
                ("optuna", "optuna"),
            )
        },
    }
    document.update(extra or {})
    return document


def parse_config_document(document: object, source: str = "document") -> StatisticsConfig:
    """Validates an exported document and returns its configuration."""
    if not isinstance(document, Mapping) or document.get("schema") != SCHEMA:
        raise ConfigError(f'{source} is not a bln-search configuration (no "schema": "{SCHEMA}")')
    version = document.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # `true == 1` in Python
        raise ConfigError(
            f"{source} has schema_version {version!r}; this bln-search reads version "
            f"{SCHEMA_VERSION}"
        )
    try:
        return StatisticsConfig.from_mapping(document.get("config"))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_config(path) -> StatisticsConfig:
    """Reads a configuration exported by `bln-search export`, for `configure(model, config)`.

    Raises `ConfigError` (one clear line) for a missing file, malformed JSON, a
    foreign document, an unknown schema version or a missing flag.
    """
    import json
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a configuration") from None
    return parse_config_document(document, str(path))


def load_document(path) -> dict:
    """The whole exported document (validated like `load_config`): the flags plus how the winner
    was trained (`training`: epochs, batch size, seed; `params`: the factory's own values)."""
    import json

    load_config(path)  # every check, in one clear line
    from pathlib import Path

    return json.loads(Path(path).read_text(encoding="utf-8"))
