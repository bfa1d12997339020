"""What works on every BLN layer of a model: the epoch-reset callback, `find_bln_layers`,
`configure`, `grouped_inference`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import keras

from bln_search.config import StatisticsConfig
from bln_search.layer import BatchLayerNormalization


class ResetPopulationStatistics(keras.callbacks.Callback):
    """Restarts every BLN layer's population averages at the start of each epoch.

    This is the published behaviour: after `fit`, the population statistics are
    the averages over the last epoch's steps. It counts steps as they happen, so
    it works with any `steps_per_epoch`, partial last batches and datasets of
    unknown length.

    Example:

    ```python
    model.fit(x, y, epochs=5, callbacks=[bln_search.ResetPopulationStatistics()])
    ```
    """

    def on_epoch_begin(self, epoch, logs=None):
        for layer in find_bln_layers(self.model):
            if layer.trainable:  # a frozen layer's state does not change, as in Keras
                layer.reset_population_statistics()


def find_bln_layers(model) -> list[BatchLayerNormalization]:
    """Every `BatchLayerNormalization` in `model`, nested models and layers included."""
    if isinstance(model, BatchLayerNormalization):
        return [model]
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, BatchLayerNormalization)
    ]


def configure(
    model, config: StatisticsConfig | Mapping[str, bool]
) -> list[BatchLayerNormalization]:
    """Sets the four inference flags on every BLN layer of `model`; returns those layers.

    `config` is a `StatisticsConfig` or a mapping with exactly the four flags (as
    `bln_search.load_config` returns). Takes effect on the next `predict` or
    `evaluate`, without rebuilding or recompiling.
    """
    config = StatisticsConfig.from_mapping(config)
    layers = find_bln_layers(model)
    if not layers:
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} contains no BatchLayerNormalization layer"
        )
    for layer in layers:
        for name, value in config.as_dict().items():
            setattr(layer, name, value)
    return layers


@contextlib.contextmanager
def grouped_inference(model, group_size: int | None) -> Iterator[list[BatchLayerNormalization]]:
    """Within the block, every BLN layer of `model` computes its current-batch
    statistics per group of `group_size` consecutive samples at inference.

    So `model.evaluate(x, batch_size=k * m)` inside `grouped_inference(model, m)`
    gives the metrics of `model.evaluate(x, batch_size=m)` in k times fewer
    steps. The layers' own `inference_group_size` comes back after the block and
    nothing of it is saved meanwhile. Training is unaffected.
    """
    layers = find_bln_layers(model)
    for layer in layers:
        layer.set_group_for_inference(group_size)
    try:
        yield layers
    finally:
        for layer in layers:
            layer.set_group_for_inference(layer.inference_group_size)
