"""What a study searched: the manifest bln-search writes on every study it creates.

Results are comparable only when they come from the same model, data, epochs
and ranking metric. The manifest records those when the study is created; every
later run compares its own and refuses, in one line, anything that would mix
incomparable results. A study without a manifest was not made by bln-search and
is never written to. What a resume may change is listed in `EXTENDABLE`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bln_search.errors import StorageError

STUDY_MANIFEST = "bln_search_manifest"
"""The study user attribute that holds the manifest (and marks a study as bln-search's)."""

SCHEMA_VERSION = 1

COMPARED = {
    "model": "model",
    "data": "data",
    "epochs": "epochs",
    "metric": "metric",
    "direction": "direction",
    "strategy": "strategy",
    "patience": "patience",
    "sampler": "sampler",
    "search_space": "search space of the factory's own trial parameters",
}
"""Fields a resume must repeat exactly, with the words an error uses for them."""

EXTENDABLE = ("seeds", "batch_sizes", "baselines")
"""Fields a resume may extend (new seeds, batch sizes or baselines are searched too)."""


@dataclass
class Manifest:
    model: dict[str, Any]
    data: dict[str, Any]
    epochs: int
    metric: str
    direction: str
    strategy: str
    sampler: str
    search_space: dict[str, Any] | None
    patience: int | None = None
    seeds: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

    def as_attr(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # plain JSON types, as the storage keeps them

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """`name: stored -> this run` for every compared field that differs."""
        mine = self.as_attr()
        return [
            f"{words}: {_show(stored.get(key))} in the study, {_show(mine[key])} now"
            for key, words in COMPARED.items()
            if stored.get(key) != mine[key]
        ]


def _show(value) -> str:
    if isinstance(value, dict):
        label = value.get("name") or value.get("kind")
        if label is not None:
            digest = value.get("fingerprint", "")
            return f"{label}" + (f" [{digest[:8]}]" if digest else "")
    return json.dumps(value)


def manifest_of(study) -> dict[str, Any] | None:
    return study.user_attrs.get(STUDY_MANIFEST)


def require_manifest(study, wait: float = 0.0) -> dict[str, Any]:
    """The study's manifest, or a one-line refusal for a study bln-search did not make.

    `wait`: a study that is still empty may have been created an instant ago by
    another worker that has not written its manifest yet.
    """
    deadline = time.monotonic() + wait
    while True:
        manifest = manifest_of(study)
        if isinstance(manifest, dict) and manifest.get("schema") == SCHEMA_VERSION:
            return manifest
        if isinstance(manifest, dict) and isinstance(manifest.get("schema"), int):
            raise StorageError(
                f"study {study.study_name!r} was written by a bln-search with manifest schema "
                f"{manifest['schema']} (this one reads {SCHEMA_VERSION}): use that version, "
                "or a new `study_name`"
            )
        fresh = not study.user_attrs and not study.get_trials(deepcopy=False)
        if manifest is None and fresh and time.monotonic() < deadline:
            time.sleep(0.25)
            continue
        raise StorageError(
            f"study {study.study_name!r} was not created by bln-search (it has no manifest), so "
            "bln-search will not write to it or rank it: pass a new `study_name`"
        )


def check_resume(study, manifest: Manifest) -> None:
    """Refuses a run whose results would not be comparable with the study's."""
    stored = require_manifest(study, wait=10.0)
    differences = manifest.differences(stored)
    if differences:
        raise StorageError(
            f"study {study.study_name!r} cannot take this run's results ({differences[0]}"
            + (f"; and {len(differences) - 1} more difference(s)" if len(differences) > 1 else "")
            + "): repeat the study's settings, or pass a new `study_name`"
        )


def extend(study, manifest: Manifest) -> None:
    """Adds this run's new seeds, batch sizes and baselines to the stored manifest."""
    stored = dict(manifest_of(study))
    mine = manifest.as_attr()
    changed = False
    for key in EXTENDABLE:
        merged = list(dict.fromkeys([*stored.get(key, []), *mine[key]]))
        if merged != stored.get(key):
            stored[key] = merged
            changed = True
    if changed:
        study.set_user_attr(STUDY_MANIFEST, stored)


def fingerprint_data(data) -> dict[str, Any]:
    """Shapes, dtypes, sample counts and a content hash (arrays), or the element spec (datasets)."""
    if data.is_dataset:
        parts = {
            name: {
                "element_spec": repr(part.element_spec),
                "cardinality": int(part.cardinality()),
            }
            for name, part in (("train", data.train), ("validation", data.validation))
        }
        return {"kind": "tf.data", **parts}
    digest = hashlib.blake2b(digest_size=16)
    parts = {}
    for name, (x, y) in (("train", data.train), ("validation", data.validation)):
        parts[name] = {"x": [list(x.shape), str(x.dtype)], "y": [list(y.shape), str(y.dtype)]}
        for array in (x, y):
            digest.update(str((array.shape, array.dtype.str)).encode())
            digest.update(memoryview(_contiguous(array)).cast("B"))
    return {"kind": "arrays", **parts, "fingerprint": digest.hexdigest()}


def _contiguous(array):
    import numpy as np

    return np.ascontiguousarray(array)


def fingerprint_model(factory, model, takes_trial: bool) -> dict[str, Any]:
    """The factory's name and, for a fixed model, a hash of its layers and compile settings.

    Layer names are left out (Keras numbers them per process). A factory that
    takes a `trial` builds a different model per trial, so its search space is
    compared instead (`Manifest.search_space`).
    """
    name = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', factory)}"
    name = name.split(":", 1)[1] if name.startswith("_bln_user_") else name
    record: dict[str, Any] = {"name": name.rsplit(":", 1)[-1]}
    if not takes_trial:
        import keras

        layers = [  # nested models name their layers in their config: their layers count instead
            (type(layer).__name__, _without_names(layer.get_config()))
            for layer in model._flatten_layers(include_self=False)
            if not isinstance(layer, keras.Model)
        ]
        compile_config = model.get_compile_config() if hasattr(model, "get_compile_config") else {}
        text = json.dumps([layers, _without_names(compile_config)], sort_keys=True, default=repr)
        record["fingerprint"] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return record


def _without_names(config):
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_without_names(v) for v in config]
    return config


def search_space_of(trial) -> dict[str, Any] | None:
    """The distributions a factory suggested on its preflight trial (None: it takes no trial)."""
    if trial is None:
        return None
    from optuna.distributions import distribution_to_json

    return {
        name: json.loads(distribution_to_json(dist))
        for name, dist in sorted(trial.distributions.items())
    }
