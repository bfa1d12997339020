"""The normalizations users would otherwise pick, built from the same factory.

Every `BatchLayerNormalization` in the user's model is swapped by cloning the
model (`keras.models.clone_model` with a `clone_function`), and the clone is
compiled exactly as the user compiled the original, so a baseline differs from
the BLN model in its normalization layers only.

Adding a baseline is one `Baseline` entry in `_ALL`: its name (stored on
trials), how tables and the live display show it, and how to build the layer
that replaces a BLN layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bln_search.errors import UsageError

BLN = "bln"
"""The model variant of the user's own model (stored on trials as `baseline` only for the others)."""

BLN_LABEL = "BLN"
"""How tables show the user's own model."""


@dataclass(frozen=True)
class Baseline:
    """One replacement for every BLN layer of the user's model."""

    name: str
    label: str
    short: str
    make_layer: Callable  # (the BLN layer being replaced, new layer name) -> a Keras layer


def _batch_norm(layer, name):
    import keras

    return keras.layers.BatchNormalization(
        axis=-1, epsilon=layer.epsilon, center=layer.center, scale=layer.scale, name=name
    )


def _layer_norm(layer, name):
    import keras

    return keras.layers.LayerNormalization(
        axis=-1, epsilon=layer.epsilon, center=layer.center, scale=layer.scale, name=name
    )


def _identity(layer, name):
    import keras

    return keras.layers.Identity(name=name)


_ALL = (
    Baseline("batch_norm", "BatchNormalization", "BN", _batch_norm),
    Baseline("layer_norm", "LayerNormalization", "LN", _layer_norm),
    Baseline("no_norm", "no normalization", "no norm", _identity),
)

BASELINES: dict[str, Baseline] = {baseline.name: baseline for baseline in _ALL}
"""Baseline name -> its record, in the order tables list them."""


def get(name: str) -> Baseline:
    """The baseline called `name`, or a `UsageError` naming the choices."""
    try:
        return BASELINES[name]
    except KeyError:
        raise UsageError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}") from None


def label_of(variant: str) -> str:
    """How tables show a model variant: `BLN` for the user's model, the baseline's label otherwise."""
    return BLN_LABEL if variant == BLN else get(variant).label


def replace_bln(model, baseline: str):
    """A compiled copy of `model` whose BLN layers are replaced by the `baseline` normalization."""
    import keras

    from bln_search.errors import UserCodeError
    from bln_search.layer import BatchLayerNormalization
    from bln_search.layer_tools import find_bln_layers

    record = get(baseline)

    def clone_function(layer):
        if not isinstance(layer, BatchLayerNormalization):
            return layer.__class__.from_config(layer.get_config())
        return record.make_layer(layer, f"{layer.name}_{baseline}")

    try:  # recursive: a BLN inside a nested Sequential or functional sub-model is replaced too
        clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    except Exception as error:  # subclassed models cannot be cloned
        raise UserCodeError(
            f"cannot build the {record.label} baseline: the model cannot be cloned "
            f"({type(error).__name__}); baselines need a Sequential or functional model"
        ) from None
    if find_bln_layers(clone):  # e.g. a BLN inside a subclassed layer, which clone_model copies
        raise UserCodeError(
            f"cannot build the {record.label} baseline: a BatchLayerNormalization sits where it "
            "cannot be replaced (inside a subclassed layer or model)"
        )
    clone.compile_from_config(model.get_compile_config())
    return clone
