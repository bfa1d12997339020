"""Everything the layer computes, on whichever Keras backend runs this, saved for comparison.

`python -m tests.backend_probe OUT_DIR` (with `KERAS_BACKEND` set) writes
`OUT_DIR/results.npz` and `OUT_DIR/model.keras`; `tests/test_backends.py` runs it
under JAX and PyTorch in subprocesses and `probe()` in-process under TensorFlow,
and compares. All inputs and initial weights come from NumPy with fixed seeds, so
the backends' own random generators play no part.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bln_search import BatchLayerNormalization, ResetPopulationStatistics, configure  # noqa: E402
from bln_search.config import all_configurations  # noqa: E402
from tests.backends import gradients  # noqa: E402

INNER = (4, 5)


def _data(seed, m, inner=INNER):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(m, *inner)) * 3.0 * rng.uniform(0.2, 2.0, inner[-1]) + 1.0).astype(
        "float32"
    )


def _mask(seed, m, positions):
    mask = np.random.default_rng(seed).uniform(size=(m, positions)) < 0.6
    mask[0] = True
    mask[:, -1] = False  # a position masked in every sample
    return mask


def _set_weights(model, seed):
    rng = np.random.default_rng(seed)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.5)


def _numpy(value):
    return keras.ops.convert_to_numpy(value)


def layer_results():
    """Training outputs, population statistics, 16 inference outputs and gradients of one layer."""
    results = {}
    layer = BatchLayerNormalization()
    layer.build((None, *INNER))
    layer.gamma.assign(np.linspace(0.5, 1.5, INNER[-1]).astype("float32"))
    layer.beta.assign(np.linspace(-1.0, 1.0, INNER[-1]).astype("float32"))
    steps = [(_data(1, 6), None), (_data(2, 6), _mask(3, 6, INNER[0])), (_data(4, 3), None)]
    for i, (x, mask) in enumerate(steps):
        results[f"train_{i}"] = _numpy(layer(x, training=True, mask=mask))
    for variable in layer.non_trainable_variables:
        results[f"state_{variable.name}"] = _numpy(variable)
    probe, probe_mask = _data(5, 5), _mask(6, 5, INNER[0])
    for config in all_configurations():
        configure(layer, config)
        results[f"infer_{config.label}"] = _numpy(layer(probe))
        results[f"infer_masked_{config.label}"] = _numpy(layer(probe, mask=probe_mask))
    state = [v.value for v in layer.non_trainable_variables]
    upstream = keras.ops.convert_to_tensor(np.random.default_rng(7).normal(size=probe.shape))
    upstream = keras.ops.cast(upstream, "float32")
    for name, mask in (("unmasked", None), ("masked", probe_mask)):
        kwargs = {} if mask is None else {"mask": keras.ops.convert_to_tensor(mask)}

        def loss(x, gamma, beta, kwargs=kwargs):
            out, _ = layer.stateless_call([gamma, beta], state, x, training=True, **kwargs)
            return keras.ops.sum(out * upstream)

        arrays = (probe, _numpy(layer.gamma), _numpy(layer.beta))
        for label, grad in zip(("x", "gamma", "beta"), gradients(loss, *arrays)):
            results[f"grad_{name}_{label}"] = grad
    return results


def model():
    inputs = keras.Input((4, 3))
    x = keras.layers.Dense(5)(inputs)
    x = BatchLayerNormalization(feature_moving_mean=True, name="bln")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def masked_model():
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(12, 4, mask_zero=True)(inputs)
    x = BatchLayerNormalization(name="bln")(x)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs)


def training_inputs():
    return _data(9, 20, (4, 3))


def fit_results(out_dir):
    """Two epochs of `fit` (SGD, no shuffling), weights and predictions; saves the model."""
    results = {}
    rng = np.random.default_rng(8)
    x, y = training_inputs(), rng.normal(size=(20, 2)).astype("float32")
    tokens = rng.integers(1, 12, (20, 6)).astype("int32")
    tokens[:, 4:] = 0
    tokens[::3, 3] = 0
    for name, build, data in (
        ("dense", model, (x, y)),
        ("masked", masked_model, (tokens, y[:, :1])),
    ):
        net = build()
        _set_weights(net, 10)
        net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        history = net.fit(
            *data,
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[ResetPopulationStatistics()],
        )
        results[f"{name}_loss"] = np.array(history.history["loss"])
        for i, weight in enumerate(net.weights):
            results[f"{name}_weight_{i}_{weight.name}"] = _numpy(weight)
        for config in all_configurations():
            configure(net, config)
            results[f"{name}_predict_{config.label}"] = net.predict(data[0], verbose=0)
        if name == "dense":
            net.save(Path(out_dir) / "model.keras")
            loaded = keras.saving.load_model(Path(out_dir) / "model.keras")
            for config in all_configurations():
                configure(loaded, config)
                results[f"loaded_predict_{config.label}"] = loaded.predict(x, verbose=0)
    return results


def probe(out_dir):
    return {**layer_results(), **fit_results(out_dir)}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "results.npz", backend=keras.backend.backend(), **probe(out))
