"""BatchLayerNormalization against the NumPy reference, Keras's harness, and in real models."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.src import testing

import bln_search
from bln_search import (
    BatchLayerNormalization,
    ResetPopulationStatistics,
    configure,
    find_bln_layers,
)
from bln_search.config import FLAG_NAMES, all_configurations
from tests.backends import gradients
from tests.reference import ReferenceBLN

ATOL = 1e-4
SHAPES = {"2d": (5,), "3d": (4, 5), "4d": (3, 4, 5)}


def random_layer(inner, rng, **kwargs):
    layer = BatchLayerNormalization(**kwargs)
    layer.build((None, *inner))
    channels = inner[-1]
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer, ReferenceBLN(gamma, beta, momentum=kwargs.get("momentum"))


def batch(rng, m, inner, scale=3.0, shift=1.0):
    # Features on different scales, so batch and feature statistics differ clearly.
    return (rng.normal(size=(m, *inner)) * scale * rng.uniform(0.2, 2.0, inner[-1]) + shift).astype(
        "float32"
    )


def max_error(actual, expected):
    return float(np.max(np.abs(keras.ops.convert_to_numpy(actual) - expected)))


@pytest.mark.parametrize("rank", SHAPES)
def test_training_matches_reference(rank):
    rng = np.random.default_rng(0)
    inner = SHAPES[rank]
    layer, reference = random_layer(inner, rng)
    for m in (7, 3, 1, 7):  # includes a partial batch and m = 1
        x = batch(rng, m, inner)
        out = layer(x, training=True)
        assert max_error(out, reference.train(x)) <= ATOL


@pytest.mark.parametrize("rank", SHAPES)
@pytest.mark.parametrize("config", all_configurations(), ids=lambda c: c.label.replace(" ", ""))
def test_inference_matches_reference_in_all_16_configurations(rank, config):
    rng = np.random.default_rng(1)
    inner = SHAPES[rank]
    layer, reference = random_layer(inner, rng)
    for m in (6, 6, 4):  # a partial last batch: the training batch size stays 6
        x = batch(rng, m, inner)
        layer(x, training=True)
        reference.train(x)
    configure(layer, config)
    flags = tuple(config.as_dict()[name] for name in FLAG_NAMES)
    for inference_size in (6, 3, 1, 11):  # the training size, smaller, one, larger
        x = batch(rng, inference_size, inner, scale=2.0, shift=-0.5)
        assert max_error(layer(x, training=False), reference.infer(x, flags)) <= ATOL


@pytest.mark.parametrize("rank", SHAPES)
def test_population_statistics_and_training_batch_size(rank):
    rng = np.random.default_rng(2)
    inner = SHAPES[rank]
    layer, reference = random_layer(inner, rng)
    for m in (5, 5, 2):
        x = batch(rng, m, inner)
        layer(x, training=True)
        reference.train(x)
    mu_b, var_b, mu_f, var_f, m = reference.population()
    assert max_error(layer.moving_batch_mean, mu_b) <= ATOL
    assert max_error(layer.moving_batch_variance, var_b) <= ATOL
    assert max_error(layer.moving_feature_mean, mu_f) <= ATOL
    assert max_error(layer.moving_feature_variance, var_f) <= ATOL
    assert float(layer.training_batch_size) == m == 5
    assert float(layer.moving_steps) == 3


@pytest.mark.parametrize("rank", SHAPES)
def test_momentum_gives_exponential_moving_averages(rank):
    rng = np.random.default_rng(3)
    inner = SHAPES[rank]
    layer, reference = random_layer(inner, rng, momentum=0.9)
    for m in (4, 4, 4, 2):
        x = batch(rng, m, inner)
        layer(x, training=True)
        reference.train(x)
    for config in all_configurations():
        configure(layer, config)
        flags = tuple(config.as_dict()[n] for n in FLAG_NAMES)
        x = batch(rng, 3, inner)
        assert max_error(layer(x, training=False), reference.infer(x, flags)) <= ATOL


def test_untrained_population_is_mean_zero_variance_one():
    rng = np.random.default_rng(4)
    layer, reference = random_layer((4, 5), rng)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_batch_mean), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_feature_variance), 1.0)
    for config in all_configurations():
        configure(layer, config)
        flags = tuple(config.as_dict()[n] for n in FLAG_NAMES)
        x = batch(rng, 5, (4, 5))
        assert max_error(layer(x, training=False), reference.infer(x, flags)) <= ATOL


def test_reset_restarts_the_average_but_keeps_values_until_the_next_step():
    rng = np.random.default_rng(5)
    layer, reference = random_layer((5,), rng)
    for m in (8, 8):
        x = batch(rng, m, (5,))
        layer(x, training=True)
        reference.train(x)
    before = keras.ops.convert_to_numpy(layer.moving_batch_mean).copy()
    layer.reset_population_statistics()
    reference.reset()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_batch_mean), before)
    x = batch(rng, 3, (5,), shift=4.0)
    layer(x, training=True)
    reference.train(x)
    mu_b, var_b, _, _, m = reference.population()
    assert max_error(layer.moving_batch_mean, mu_b) <= ATOL
    assert max_error(layer.moving_batch_variance, var_b) <= ATOL
    assert float(layer.training_batch_size) == m == 3


def test_stateless_training_returns_the_new_state_and_writes_no_variable():
    """`stateless_call` records the population update: on PyTorch, where a training step
    writes its state in place, neither the layer nor the state passed in may change."""
    rng = np.random.default_rng(23)
    layer, reference = random_layer((4, 5), rng)
    before = [keras.ops.convert_to_numpy(v).copy() for v in layer.non_trainable_variables]
    state = [keras.ops.convert_to_tensor(value.copy()) for value in before]
    x = batch(rng, 6, (4, 5))
    out, new_state = layer.stateless_call(
        [v.value for v in layer.trainable_variables], state, x, training=True
    )
    assert max_error(out, reference.train(x)) <= ATOL
    for name, value, variable, given in zip(
        [v.name for v in layer.non_trainable_variables],
        before,
        layer.non_trainable_variables,
        state,
    ):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value, err_msg=name)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(given), value, err_msg=name)
    new = dict(zip([v.name for v in layer.non_trainable_variables], new_state))
    for name, expected in zip(
        ["moving_batch_mean", "moving_batch_variance", "moving_feature_mean"],
        reference.population(),
    ):
        assert max_error(new[name], expected) <= ATOL, name
    assert float(new["moving_steps"]) == 1 and float(new["training_batch_size"]) == 6


def test_flags_are_validated_and_round_trip_through_config():
    with pytest.raises(TypeError, match="batch_moving_var"):
        BatchLayerNormalization(batch_moving_var="yes")
    with pytest.raises(ValueError, match="momentum"):
        BatchLayerNormalization(momentum=1.5)
    layer = BatchLayerNormalization(
        False, True, True, False, momentum=0.5, epsilon=1e-5, name="bln"
    )
    layer.build((None, 3, 2))
    layer.feature_moving_var = True
    clone = BatchLayerNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.statistics_config.as_dict() == {
        "batch_moving_mean": False,
        "batch_moving_var": True,
        "feature_moving_mean": True,
        "feature_moving_var": True,
    }


def test_unknown_inner_dimensions_are_a_clear_error():
    with pytest.raises(ValueError, match="must be known"):
        BatchLayerNormalization().build((None, None, 4))
    with pytest.raises(ValueError, match="rank >= 2"):
        BatchLayerNormalization().build((4,))


class KerasHarnessTest(testing.TestCase):
    """Keras's own contract checks: shapes, weights, serialization, training, mixed precision."""

    def test_run_layer_test(self):
        for input_shape in [(3, 5), (3, 4, 5), (3, 2, 4, 5)]:
            for momentum in (None, 0.9):
                self.run_layer_test(
                    BatchLayerNormalization,
                    init_kwargs={
                        "momentum": momentum,
                        "feature_moving_mean": True,
                        "inference_group_size": 2,
                    },
                    input_shape=input_shape,
                    expected_output_shape=input_shape,
                    expected_num_trainable_weights=2,
                    expected_num_non_trainable_weights=12,
                    expected_num_seed_generators=0,
                    expected_num_losses=0,
                    supports_masking=True,
                )

    def test_run_layer_test_without_center_and_scale(self):
        self.run_layer_test(
            BatchLayerNormalization,
            init_kwargs={"center": False, "scale": False, "gamma_regularizer": "l2"},
            input_shape=(2, 3, 4),
            expected_output_shape=(2, 3, 4),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=12,
        )


def dense_model(features=5, **layer_kwargs):
    """Input -> BLN -> Dense: the BLN layer sees the raw data, so its statistics are known."""
    inputs = keras.Input((features,))
    x = BatchLayerNormalization(name="bln", **layer_kwargs)(inputs)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_keras_save_load_round_trip_in_all_16_configurations(tmp_path):
    rng = np.random.default_rng(6)
    inputs = keras.Input((4, 3))
    x = BatchLayerNormalization(feature_moving_mean=True, name="bln")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer="adam", loss="mse")
    data = batch(rng, 20, (4, 3))
    model.fit(
        data,
        rng.normal(size=(20, 2)),
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[ResetPopulationStatistics()],
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    original, restored = model.get_layer("bln"), loaded.get_layer("bln")
    assert restored.get_config() == original.get_config()
    for a, b in zip(original.non_trainable_weights, restored.non_trainable_weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    probe = batch(rng, 5, (4, 3))
    for config in all_configurations():
        configure(model, config)
        configure(loaded, config)
        np.testing.assert_allclose(
            model.predict(probe, verbose=0), loaded.predict(probe, verbose=0), atol=1e-6
        )


def test_training_with_batch_size_one_stays_finite():
    rng = np.random.default_rng(7)
    model = dense_model()
    x = batch(rng, 6, (5,))
    history = model.fit(
        x,
        rng.normal(size=(6, 1)),
        batch_size=1,
        epochs=2,
        verbose=0,
        callbacks=[ResetPopulationStatistics()],
    )
    assert np.all(np.isfinite(history.history["loss"]))
    layer = model.get_layer("bln")
    assert float(layer.training_batch_size) == 1
    for config in all_configurations():
        configure(model, config)
        assert np.all(np.isfinite(model.predict(x, verbose=0)))


def test_callback_resets_each_epoch_with_a_partial_last_batch():
    rng = np.random.default_rng(8)
    model = dense_model()
    x = batch(rng, 10, (5,))
    y = rng.normal(size=(10, 1))
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[ResetPopulationStatistics()],
    )
    layer = model.get_layer("bln")
    reference = ReferenceBLN(np.ones(5), np.zeros(5))
    for start in (0, 4, 8):  # the last epoch only: steps of 4, 4 and 2
        reference.train(x[start : start + 4])
    mu_b, var_b, mu_f, var_f, m = reference.population()
    assert float(layer.moving_steps) == 3
    assert float(layer.training_batch_size) == m == 4
    assert max_error(layer.moving_batch_mean, mu_b) <= ATOL
    assert max_error(layer.moving_batch_variance, var_b) <= ATOL
    assert max_error(layer.moving_feature_mean, mu_f) <= ATOL
    assert max_error(layer.moving_feature_variance, var_f) <= ATOL


def test_without_callback_the_average_spans_all_epochs():
    rng = np.random.default_rng(9)
    model = dense_model()
    x = batch(rng, 8, (5,))
    model.fit(x, rng.normal(size=(8, 1)), batch_size=4, epochs=3, shuffle=False, verbose=0)
    assert float(model.get_layer("bln").moving_steps) == 6


def test_callback_works_with_steps_per_epoch_and_a_dataset():
    import tensorflow as tf

    rng = np.random.default_rng(10)
    model = dense_model()
    x = batch(rng, 12, (5,))
    dataset = tf.data.Dataset.from_tensor_slices((x, rng.normal(size=(12, 1)))).batch(4).repeat()
    model.fit(
        dataset, steps_per_epoch=2, epochs=3, verbose=0, callbacks=[ResetPopulationStatistics()]
    )
    reference = ReferenceBLN(np.ones(5), np.zeros(5))
    for start in (4, 8):  # the stream is b0 b1 | b2 b0 | b1 b2: epoch 3 sees x[4:8], x[8:12]
        reference.train(x[start : start + 4])
    layer = model.get_layer("bln")
    assert float(layer.moving_steps) == 2
    assert max_error(layer.moving_batch_mean, reference.population()[0]) <= ATOL


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs eagerly: no trace")
def test_switching_flags_after_fit_changes_evaluate_without_retracing(monkeypatch):
    rng = np.random.default_rng(11)
    model = dense_model()
    x = batch(rng, 32, (5,))
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ResetPopulationStatistics()])
    # Count Python executions of `call`: a compiled function runs it only while tracing.
    traces = []
    original_call = BatchLayerNormalization.call
    monkeypatch.setattr(
        BatchLayerNormalization,
        "call",
        lambda self, *a, **k: traces.append(1) or original_call(self, *a, **k),
    )
    probe = batch(
        rng, 16, (5,), scale=5.0, shift=3.0
    )  # shifted: population and batch statistics differ
    losses = {}
    for config in all_configurations():
        configure(model, config)
        losses[config] = model.evaluate(
            probe, probe.sum(axis=1, keepdims=True), batch_size=16, verbose=0
        )
        if config == all_configurations()[0]:
            test_function, traced_once = model.test_function, len(traces)
    assert (
        len({round(v, 6) for v in losses.values()}) == 16
    )  # every configuration changed the result
    assert model.test_function is test_function  # no recompile
    assert (
        len(traces) == traced_once <= 1
    )  # the first evaluate's trace served all 16 configurations
    configure(model, all_configurations()[0])
    again = model.evaluate(probe, probe.sum(axis=1, keepdims=True), batch_size=16, verbose=0)
    assert again == pytest.approx(losses[all_configurations()[0]], abs=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="jit_compile on torch is torch.compile (minutes)"
)
def test_jit_compile_matches_eager():
    rng = np.random.default_rng(12)
    x = batch(rng, 24, (4, 3))
    y = rng.normal(size=(24, 1)).astype("float32")
    models = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4, 3))
        h = keras.layers.Flatten()(BatchLayerNormalization(name="bln")(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        model.compile(optimizer="sgd", loss="mse", jit_compile=jit)
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[ResetPopulationStatistics()],
        )
        models.append(model)
    for config in all_configurations():
        outputs = []
        for model in models:
            configure(model, config)
            outputs.append(model.predict(x, batch_size=8, verbose=0))
        np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)


def test_mixed_float16_computes_statistics_in_float32():
    rng = np.random.default_rng(13)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        layer = BatchLayerNormalization()
        x = batch(rng, 8, (4, 6), scale=200.0)  # var ~ 4e4 * C overflows float16 sums of squares
        out = layer(x.astype("float16"), training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(layer.moving_batch_variance)))
        for config in all_configurations():
            configure(layer, config)
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(layer(x.astype("float16")))))
        reference = ReferenceBLN(np.ones(6), np.zeros(6))
        expected = reference.train(x.astype("float16").astype("float64"))
        assert max_error(out, expected) <= 2e-3  # float16 output rounding only
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_configure_and_find_reach_nested_models():
    inner = keras.Sequential(
        [keras.Input((6,)), BatchLayerNormalization(name="inner_bln")], name="block"
    )
    inputs = keras.Input((6,))
    x = BatchLayerNormalization(name="outer_bln")(inner(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    layers = find_bln_layers(model)
    assert {layer.name for layer in layers} == {"inner_bln", "outer_bln"}
    configure(
        model,
        {
            "batch_moving_mean": False,
            "batch_moving_var": False,
            "feature_moving_mean": True,
            "feature_moving_var": True,
        },
    )
    assert all(layer.statistics_config.label == "-- -- FM FV" for layer in layers)
    with pytest.raises(ValueError, match="no BatchLayerNormalization"):
        configure(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
            bln_search.StatisticsConfig(),
        )
    with pytest.raises(bln_search.ConfigError, match="missing"):
        configure(model, {"batch_moving_mean": True})


@pytest.mark.slow
@pytest.mark.parametrize("study_name", ["digits_cnn", "digits_rnn"])
def test_small_cnn_and_gru_learn_with_bln(study_name):
    """The shipped studies: conv -> BLN -> ReLU -> pool (x2), and Dense -> BLN (per time step) -> GRU."""
    import importlib

    study = importlib.import_module(f"studies.{study_name}")
    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = study.load_data()
    model = study.build()
    history = model.fit(
        x, y, batch_size=25, epochs=4, verbose=0, callbacks=[ResetPopulationStatistics()]
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert model.evaluate(xv, yv, verbose=0, return_dict=True)["accuracy"] > 0.8


def plain_formula(x, gamma, beta, weights=None):
    """The spec's training output in `keras.ops`, left to the backend's autodiff."""
    ops = keras.ops
    m, c = x.shape[0], x.shape[-1]
    w = ops.ones(x.shape[:-1] + (1,)) if weights is None else ops.convert_to_tensor(weights)
    n = ops.maximum(ops.sum(w, axis=0), 1.0)
    mu_b = ops.sum(w * x, axis=0) / n
    var_b = ops.sum(w * (x - mu_b) ** 2, axis=0) / n
    mu_f = ops.mean(x, axis=-1, keepdims=True)
    var_f = ops.mean((x - mu_f) ** 2, axis=-1, keepdims=True)
    x_hat = (
        (1 / m - 1e-4) * (x - mu_f) / ops.sqrt(var_f + 1e-3)
        + (1 - 1 / m - 1e-4) * (x - mu_b) / ops.sqrt(var_b + 1e-3)
    ) / np.sqrt(c)
    return gamma * x_hat + beta


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("rank", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 7])
def test_hand_written_gradient_matches_autodiff_of_the_formula(rank, m, masked):
    """The training pass's custom backward against the backend's autodiff of the spec formula."""
    rng = np.random.default_rng(14)
    inner = SHAPES[rank]
    layer, _ = random_layer(inner, rng)
    x = batch(rng, m, inner)
    upstream = keras.ops.convert_to_tensor(rng.normal(size=(m, *inner)).astype("float32"))
    mask = ragged_mask(rng, m, inner) if masked else None
    weights = None if mask is None else mask[..., None].astype("float32")
    state = [v.value for v in layer.non_trainable_variables]

    def ours(x, gamma, beta):
        kwargs = {} if mask is None else {"mask": keras.ops.convert_to_tensor(mask)}
        out, _ = layer.stateless_call([gamma, beta], state, x, training=True, **kwargs)
        return keras.ops.sum(out * upstream)

    def theirs(x, gamma, beta):
        return keras.ops.sum(plain_formula(x, gamma, beta, weights) * upstream)

    arrays = (x, keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta))
    for a, b in zip(gradients(ours, *arrays), gradients(theirs, *arrays)):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.max(np.abs(b)))))


# Masks: a Keras mask has the input's shape without the feature axis (True = keep).


def ragged_mask(rng, m, inner):
    """Ragged keep-masks; with two or more positions, the last one is masked in every sample."""
    mask = rng.uniform(size=(m, *inner[:-1])) < 0.6
    mask[0] = True  # every position but the last keeps a sample
    if inner[:-1]:
        mask[(slice(None),) + (-1,) * len(inner[:-1])] = False
    return mask


@pytest.mark.parametrize("momentum", [None, 0.9])
@pytest.mark.parametrize("rank", SHAPES)
def test_masked_training_matches_reference(rank, momentum):
    rng = np.random.default_rng(15)
    inner = SHAPES[rank]
    layer, reference = random_layer(inner, rng, momentum=momentum)
    for step, m in enumerate((7, 5, 1, 7)):
        x = batch(rng, m, inner)
        mask = ragged_mask(rng, m, inner) if step != 1 else None
        out = layer(x, training=True, mask=mask)
        assert max_error(out, reference.train(x, mask)) <= ATOL
        if step == 2:
            layer.reset_population_statistics()
            reference.reset()
    mu_b, var_b, mu_f, var_f, m = reference.population()
    assert max_error(layer.moving_batch_mean, mu_b) <= ATOL
    assert max_error(layer.moving_batch_variance, var_b) <= ATOL
    assert max_error(layer.moving_feature_mean, mu_f) <= ATOL
    assert max_error(layer.moving_feature_variance, var_f) <= ATOL
    assert float(layer.training_batch_size) == m == 7  # masked samples count in the mixing weight


@pytest.mark.parametrize("rank", SHAPES)
def test_masked_inference_matches_reference_in_all_16_configurations(rank):
    rng = np.random.default_rng(16)
    inner = SHAPES[rank]
    layer, reference = random_layer(inner, rng)
    for m in (6, 6, 4):
        x, mask = batch(rng, m, inner), ragged_mask(rng, m, inner)
        layer(x, training=True, mask=mask)
        reference.train(x, mask)
    for config in all_configurations():
        configure(layer, config)
        flags = tuple(config.as_dict()[name] for name in FLAG_NAMES)
        for size in (6, 3):
            x, mask = batch(rng, size, inner, scale=2.0, shift=-0.5), ragged_mask(rng, size, inner)
            expected = reference.infer(x, flags, mask)
            assert max_error(layer(x, training=False, mask=mask), expected) <= ATOL


def test_a_masked_time_step_does_not_change_the_statistics():
    rng = np.random.default_rng(17)
    x = batch(rng, 6, (4, 5))
    mask = np.ones((6, 4), bool)
    mask[2, 1] = mask[4, 3] = False
    changed = x.copy()
    changed[2, 1] += 100.0
    changed[4, 3] = -50.0
    outputs, states = [], []
    for data in (x, changed):
        layer, _ = random_layer((4, 5), np.random.default_rng(0))
        outputs.append(keras.ops.convert_to_numpy(layer(data, training=True, mask=mask)))
        states.append([keras.ops.convert_to_numpy(v) for v in layer.non_trainable_variables])
    np.testing.assert_allclose(outputs[0][mask], outputs[1][mask], atol=1e-5)
    for a, b in zip(*states):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_masked_lstm_learns_and_padding_never_reaches_the_statistics():
    rng = np.random.default_rng(18)
    lengths = rng.integers(2, 7, 64)
    lengths[::16] = 6  # every batch of 16 (unshuffled) reaches position 6
    tokens = np.zeros((64, 8), "int32")  # positions 7 and 8 are padding in every sample
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.integers(1, 20, length)
    y = (lengths > 4).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,), dtype="int32"),
            keras.layers.Embedding(20, 6, mask_zero=True),
            BatchLayerNormalization(name="bln"),
            keras.layers.LSTM(8),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.02), "binary_crossentropy")
    history = model.fit(
        tokens,
        y,
        batch_size=16,
        epochs=6,
        shuffle=False,
        verbose=0,
        callbacks=[ResetPopulationStatistics()],
    )
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    layer = model.get_layer("bln")
    steps = keras.ops.convert_to_numpy(layer.moving_position_steps)[:, 0]
    np.testing.assert_array_equal(steps, [4, 4, 4, 4, 4, 4, 0, 0])  # 4 steps an epoch
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_batch_mean)[6:], 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_batch_variance)[6:], 1.0)


def test_weights_saved_before_the_per_position_counter_still_load():
    rng = np.random.default_rng(19)
    layer, _ = random_layer((4, 5), rng, feature_moving_var=True)
    for _ in range(3):
        layer(batch(rng, 6, (4, 5)), training=True)
    saved = [v for v in layer.weights if v.name != "inference_group_size"]  # never saved
    old_layout = [keras.ops.convert_to_numpy(v) for v in saved[:-1]]
    assert [v.name for v in saved[-1:]] == ["moving_position_steps"]
    restored = BatchLayerNormalization(feature_moving_var=True)
    restored.build((None, 4, 5))
    restored.load_own_variables({str(i): value for i, value in enumerate(old_layout)})
    for a, b in zip(layer.weights, restored.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_mask_of_the_wrong_rank_is_a_clear_error():
    layer = BatchLayerNormalization()
    with pytest.raises(ValueError, match="one dimension less"):
        layer(np.ones((2, 3, 4), "float32"), mask=np.ones((2, 3, 4), bool))


# A frozen layer (trainable=False) behaves as Keras's BatchNormalization does.


def test_frozen_layer_normalizes_in_inference_mode_and_keeps_its_state_in_fit():
    rng = np.random.default_rng(20)
    model = dense_model(feature_moving_mean=True)
    x = batch(rng, 24, (5,))
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ResetPopulationStatistics()])
    layer = model.get_layer("bln")
    layer.trainable = False
    model.compile(optimizer="sgd", loss="mse")
    probe = batch(rng, 8, (5,), scale=2.0, shift=-1.0)
    for config in all_configurations():
        configure(layer, config)
        inference = keras.ops.convert_to_numpy(layer(probe, training=False))
        in_training = keras.ops.convert_to_numpy(layer(probe, training=True))
        np.testing.assert_allclose(in_training, inference, atol=1e-6)
    before = [keras.ops.convert_to_numpy(v).copy() for v in layer.weights]
    model.fit(x, y, batch_size=6, epochs=2, verbose=0, callbacks=[ResetPopulationStatistics()])
    for name, value, variable in zip([v.name for v in layer.weights], before, layer.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value, err_msg=name)


# Dtypes and flags.


def test_output_has_the_compute_dtype_whatever_the_input_dtype():
    rng = np.random.default_rng(21)
    layer, reference = random_layer((5,), rng)
    x = np.round(batch(rng, 6, (5,)) * 3)
    out = layer(x.astype("int32"), training=True)  # integer inputs are not autocast by Keras
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert max_error(out, reference.train(x)) <= ATOL


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_bfloat16_is_finite_and_close_to_float32(policy):
    rng = np.random.default_rng(22)
    x = batch(rng, 8, (4, 6), scale=50.0)
    layers = [BatchLayerNormalization(dtype=p) for p in (policy, "float32")]
    for _ in range(3):
        outs = [
            keras.ops.convert_to_numpy(bln(x, training=True)).astype("float32") for bln in layers
        ]
    assert keras.backend.standardize_dtype(layers[0](x).dtype) == "bfloat16"
    assert np.all(np.isfinite(outs[0]))
    np.testing.assert_allclose(outs[0], outs[1], atol=0.05)  # bfloat16 keeps 8 bits
    for config in all_configurations():
        for layer in layers:
            configure(layer, config)
        infer = [keras.ops.convert_to_numpy(bln(x)).astype("float32") for bln in layers]
        assert np.all(np.isfinite(infer[0]))
        np.testing.assert_allclose(infer[0], infer[1], atol=0.05)
    layer = layers[0]  # the step counters stay exact past bfloat16's 256
    layer.moving_steps.assign(256.0)
    layer.moving_position_steps.assign(np.full(layer.moving_position_steps.shape, 256.0))
    layer(x, training=True)
    assert float(layer.moving_steps) == 257
    assert np.all(keras.ops.convert_to_numpy(layer.moving_position_steps) == 257)


def test_reading_a_flag_never_converts_to_numpy(monkeypatch):
    layer = BatchLayerNormalization(feature_moving_mean=True)
    layer.build((None, 3))
    layer.batch_moving_var = False

    def no_host_sync(*args, **kwargs):
        raise AssertionError("a flag read converted a tensor to NumPy")

    monkeypatch.setattr(keras.ops, "convert_to_numpy", no_host_sync)
    assert (layer.batch_moving_mean, layer.batch_moving_var) == (True, False)
    assert (layer.feature_moving_mean, layer.feature_moving_var) == (True, False)
    assert layer.statistics_config.as_dict() == {
        name: layer.get_config()[name] for name in FLAG_NAMES
    }
    assert layer.get_config()["batch_moving_var"] is False
