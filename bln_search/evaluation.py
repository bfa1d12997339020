"""How a search evaluates: large physical batches, grouped like the training batch size.

A configuration that reads the current batch's statistics is defined by batches
of the training batch size `m`, in the validation data's order, the last one
possibly partial. Evaluating batch by batch at `m` costs one step per `m`
samples, 16 times an epoch: at `m = 1` that dwarfs the training. The layers'
grouped inference (`grouped_inference`) gives the same outputs for one batch of
`k * m` samples, so every configuration is evaluated in few large steps.
Keras averages metrics over samples, so the values are today's (up to float
summation order).
"""

from __future__ import annotations

import math

MEMORY_BUDGET = 256 * 2**20  # bytes of activations one evaluation batch may hold
MOST_SAMPLES = 4096  # beyond this, larger batches gain nothing on a CPU
FALLBACK_SAMPLE_BYTES = 2**20  # a model whose layer outputs cannot be measured


def evaluation_batch_size(
    model, batch_size: int, samples: int, requested: int | None = None
) -> int:
    """The physical evaluation batch: whole groups of `batch_size`, as many as memory allows.

    `requested` (rounded down to a multiple of `batch_size`, at least one group)
    overrides the choice; `requested = batch_size` evaluates batch by batch.
    """
    if requested is not None:
        return max(1, requested // batch_size) * batch_size
    budget = min(MEMORY_BUDGET // max(1, activation_bytes(model)), MOST_SAMPLES, samples)
    return max(1, budget // batch_size) * batch_size


def activation_bytes(model) -> int:
    """Bytes of layer outputs one sample produces in `model` (an estimate, for the budget)."""
    total = 0
    try:
        for layer in model._flatten_layers(include_self=False):
            for output in _outputs(layer):
                shape = output.shape[1:]
                if any(dim is None for dim in shape):
                    return FALLBACK_SAMPLE_BYTES
                total += math.prod(shape) * 4
    except (AttributeError, ValueError, RuntimeError):  # never called symbolically, or shared
        return FALLBACK_SAMPLE_BYTES
    return total or FALLBACK_SAMPLE_BYTES


def _outputs(layer) -> list:
    import keras

    return keras.tree.flatten(layer.output)


try:  # what `evaluate` returns its logs through (Keras 3); without it, `evaluate` itself
    from keras.src.utils.python_utils import pythonify_logs as _pythonify
except ImportError:  # pragma: no cover
    _pythonify = None


class RepeatedEvaluation:
    """`model.evaluate(dataset, return_dict=True)`, called configuration after configuration.

    Keras's `evaluate` creates a data iterator and a callback list on every call,
    some 4 ms each time, 16 times an epoch. On TensorFlow, for a plain model
    (one step per execution, no distribution strategy) and a dataset of known
    length, this runs the same steps itself: the same traced `test_function`,
    fed by one iterator over the dataset repeated, reading exactly one pass per
    call, the metrics reset before it. The values are `evaluate`'s, to the bit.
    Anything else goes through `evaluate`.
    """

    def __init__(self, model, dataset):
        self.model, self.dataset = model, dataset
        self.steps = self._steps_if_plain(model, dataset)
        self._iterator = None

    @staticmethod
    def _steps_if_plain(model, dataset) -> int | None:
        import keras

        if (
            _pythonify is None
            or keras.backend.backend() != "tensorflow"
            or getattr(model, "steps_per_execution", 1) != 1
        ):
            return None
        import tensorflow as tf

        if not isinstance(dataset, tf.data.Dataset) or tf.distribute.has_strategy():
            return None
        if getattr(model, "_distribute_strategy", None) is not None:
            return None
        steps = int(dataset.cardinality())
        return steps if steps > 0 else None

    def __call__(self) -> dict:
        model = self.model
        if self.steps is None:
            return model.evaluate(self.dataset, verbose=0, return_dict=True)
        if self._iterator is None:
            self._iterator = iter(self.dataset.repeat())
        model.make_test_function()
        model.reset_metrics()
        for _ in range(self.steps):
            logs = model.test_function(self._iterator)
        # As `evaluate` ends: the metrics' results, or a custom `test_step`'s own logs.
        results = model.get_metrics_result()
        if not isinstance(logs, dict) or set(logs) != set(results):
            results = logs
        return _pythonify(results)
