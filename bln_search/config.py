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
    "TrainingPlan",
    "all_configurations",
    "config_document",
    "load_config",
    "parse_config_document",
    "training_plan",
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


@dataclass(frozen=True)
class TrainingPlan:
    """How to train the final model, read from an exported document (see `training_plan`).

    `found_at` is the batch size whose winner `config` and `params` are; it
    differs from `batch_size` only when a batch size the search did not try was
    asked for.
    """

    config: StatisticsConfig
    batch_size: int | None
    epochs: int
    seed: int
    params: dict
    metric: str
    direction: str
    found_at: int | None
    model_check: dict | None = None  # the model the search ran (`training.check_same_model`)


def training_plan(
    document: Mapping,
    *,
    batch_size: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    source: str = "the export",
) -> TrainingPlan:
    """What `train` should do with an exported document; each argument given overrides it.

    By default: the batch size the winner was found at (`training.batch_size`),
    the search's epochs and seed, and the winner's own values of a factory that
    takes a `trial` (`params`). A `batch_size` the search tried (`by_batch_size`)
    takes *that* batch size's winner, flags and values alike; one it did not try
    keeps the exported winner. Exports of an older bln-search load too; where one
    lacks what a choice needs (the epochs, a batch size's values), this raises
    `ConfigError` saying what to pass, rather than guessing.
    """
    config = parse_config_document(document, source)
    parts = {key: document.get(key) or {} for key in ("training", "by_batch_size", "params")}
    parts["metric"] = document.get("metric") or {}
    wrong = [f'"{key}"' for key, value in parts.items() if not isinstance(value, Mapping)]
    if wrong:
        raise ConfigError(f"{source}: {', '.join(wrong)} must be JSON objects")
    training, by_batch_size, params, metric = parts.values()
    for key, least in (("batch_size", 1), ("epochs", 1), ("seed", 0)):
        value = training.get(key)
        if value is not None and (type(value) is not int or value < least):
            raise ConfigError(
                f'{source}: training "{key}" must be a whole number >= {least}, got {value!r}'
            )
    model_check = training.get("model_check")
    if model_check is not None and not isinstance(model_check, Mapping):
        raise ConfigError(f'{source}: training "model_check" must be a JSON object')
    if not all(str(b).isdigit() and int(b) >= 1 for b in by_batch_size):
        raise ConfigError(f"{source}: by_batch_size must be keyed by batch sizes")
    direction = metric.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(
            f'{source}: metric "direction" must be "minimize" or "maximize", got {direction!r}'
        )
    metric_name = metric.get("name", "val_loss")
    if not isinstance(metric_name, str) or not metric_name.startswith("val_"):
        raise ConfigError(
            f'{source}: metric "name" must be a validation metric (val_...), got {metric_name!r}'
        )
    found_at = training.get("batch_size")  # each checked above: a whole number or None
    if found_at is None and by_batch_size:
        found_at = min(int(b) for b in by_batch_size)
    if batch_size is None:
        batch_size = found_at
    elif str(batch_size) in by_batch_size and batch_size != found_at:
        entry = by_batch_size[str(batch_size)]
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: by_batch_size {batch_size} must be a JSON object")
        try:
            config = StatisticsConfig.from_mapping(entry.get("config"))
        except ConfigError as error:
            raise ConfigError(f"{source}: by_batch_size {batch_size}: {error}") from None
        if "params" in entry:
            params = entry["params"] or {}
            if not isinstance(params, Mapping):
                raise ConfigError(
                    f'{source}: by_batch_size {batch_size}: "params" must be a JSON object'
                )
        elif params:  # an older export: only the first winner's values were recorded
            raise ConfigError(
                f"{source} records the factory's own values of the winner at batch size "
                f"{found_at} only, not of the one at {batch_size}: export the study again"
            )
        found_at = batch_size
    if epochs is None:
        epochs = training.get("epochs")
        if epochs is None:
            raise ConfigError(
                f"{source} does not record the search's epochs: pass the number of epochs "
                "(`epochs`)"
            )
    if seed is None:
        seed = training.get("seed") or 0
    return TrainingPlan(
        config=config,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        params=dict(params),
        metric=metric_name,
        direction=direction,
        found_at=found_at,
        model_check=dict(model_check) if model_check else None,
    )
