"""The normalizations users would otherwise pick, built from the same factory.

Every `BatchLayerNormalization` in the user's model is swapped by cloning the
model (`keras.models.clone_model` with a `clone_function`), and the clone is
compiled exactly as the user compiled the original, so a baseline differs from
the BLN model in its normalization layers only.
"""

from __future__ import annotations

BASELINES = {
    "batch_norm": "BatchNormalization",
    "layer_norm": "LayerNormalization",
    "no_norm": "no normalization",
}
"""Baseline name (stored on trials) -> how tables show it."""

SHORT_NAMES = {"batch_norm": "BN", "layer_norm": "LN", "no_norm": "no norm"}
"""For the one-line progress display."""

BLN = "bln"


def replace_bln(model, baseline: str):
    """A compiled copy of `model` whose BLN layers are replaced by the `baseline` normalization."""
    import keras

    from bln_search.errors import UserCodeError
    from bln_search.layer import BatchLayerNormalization

    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")

    def clone_function(layer):
        if not isinstance(layer, BatchLayerNormalization):
            return layer.__class__.from_config(layer.get_config())
        name = f"{layer.name}_{baseline}"
        if baseline == "batch_norm":
            return keras.layers.BatchNormalization(axis=-1, epsilon=layer.epsilon, center=layer.center, scale=layer.scale, name=name)
        if baseline == "layer_norm":
            return keras.layers.LayerNormalization(axis=-1, epsilon=layer.epsilon, center=layer.center, scale=layer.scale, name=name)
        return keras.layers.Identity(name=name)

    try:
        clone = keras.models.clone_model(model, clone_function=clone_function)
    except Exception as error:  # subclassed models cannot be cloned
        raise UserCodeError(
            f"cannot build the {BASELINES[baseline]} baseline: the model cannot be cloned "
            f"({type(error).__name__}); baselines need a Sequential or functional model"
        ) from None
    clone.compile_from_config(model.get_compile_config())
    return clone
