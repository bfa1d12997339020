"""Grouped inference statistics: one batch of k groups of m equals k batches of m."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pytest

import bln_search
from bln_search import BatchLayerNormalization, configure, grouped_inference
from bln_search.config import FLAG_NAMES, all_configurations
from bln_search.trials import config_of
from tests.fixtures import models
from tests.test_layer import SHAPES, batch, ragged_mask, random_layer

TOLERANCE = 1e-5  # absolute, or relative where |output| > 1 (float32 has 1e-5 steps above 128)
REFERENCE_TOLERANCE = 1e-4


def error(actual, expected) -> float:
    """The largest difference, relative where the expected value is above 1 in magnitude."""
    actual, expected = keras.ops.convert_to_numpy(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))))


def trained_layer(inner, rng, training_size=6):
    layer, reference = random_layer(inner, rng)
    for m in (training_size, training_size, 4):
        x = batch(rng, m, inner)
        layer(x, training=True)
        reference.train(x)
    return layer, reference


def batch_by_batch(function, x, m, *extra):
    """What evaluating batch by batch gives: consecutive batches of m, the last partial."""
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(function(x[i : i + m], *(e[i : i + m] for e in extra)))
            for i in range(0, len(x), m)
        ]
    )


@pytest.mark.parametrize("rank", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 7, 25])
def test_grouped_inference_equals_batch_by_batch_in_all_16_configurations(rank, m):
    rng = np.random.default_rng(30 + m)
    inner = SHAPES[rank]
    layer, reference = trained_layer(inner, rng)
    x = batch(rng, 3 * m + max(1, m // 2), inner, scale=2.0, shift=-0.5)  # with a remainder
    for config in all_configurations():
        configure(layer, config)
        flags = tuple(config.as_dict()[name] for name in FLAG_NAMES)
        layer.set_group_for_inference(None)
        expected = batch_by_batch(lambda part: layer(part, training=False), x, m)
        layer.set_group_for_inference(m)
        grouped = keras.ops.convert_to_numpy(layer(x, training=False))
        assert error(grouped, expected) <= TOLERANCE, config.label
        independent = batch_by_batch(lambda part, flags=flags: reference.infer(part, flags), x, m)
        assert error(grouped, independent) <= REFERENCE_TOLERANCE, config.label


@pytest.mark.parametrize("rank", ["3d", "4d"])
def test_grouped_inference_with_a_ragged_mask_equals_batch_by_batch(rank):
    rng = np.random.default_rng(40)
    inner = SHAPES[rank]
    layer, reference = trained_layer(inner, rng)
    m = 3
    x = batch(rng, 3 * m + 2, inner)
    mask = ragged_mask(rng, len(x), inner)
    for config in all_configurations():
        configure(layer, config)
        flags = tuple(config.as_dict()[name] for name in FLAG_NAMES)
        layer.set_group_for_inference(None)
        expected = batch_by_batch(lambda p, k: layer(p, training=False, mask=k), x, m, mask)
        layer.set_group_for_inference(m)
        grouped = keras.ops.convert_to_numpy(layer(x, training=False, mask=mask))
        assert error(grouped, expected) <= TOLERANCE, config.label
        independent = batch_by_batch(
            lambda p, k, flags=flags: reference.infer(p, flags, k), x, m, mask
        )
        assert error(grouped, independent) <= REFERENCE_TOLERANCE, config.label


def test_grouping_never_changes_training():
    rng = np.random.default_rng(41)
    inner = SHAPES["3d"]
    plain, _ = random_layer(inner, rng)
    grouped, _ = random_layer(inner, np.random.default_rng(41))
    grouped.inference_group_size = 2
    for _ in range(2):
        x = batch(rng, 6, inner)
        a, b = plain(x, training=True), grouped(x, training=True)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    for a, b in zip(plain.non_trainable_weights, grouped.non_trainable_weights):
        if a.name != "inference_group_size":
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
            )


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs eagerly: no trace")
def test_switching_the_grouping_retraces_nothing(monkeypatch):
    """The group size is state like the flags: one compiled predict serves every m."""
    rng = np.random.default_rng(42)
    model = keras.Sequential([keras.Input((4, 5)), BatchLayerNormalization(name="bln")])
    model.compile(loss="mse")
    layer = model.get_layer("bln")
    model.fit(batch(rng, 12, (4, 5)), batch(rng, 12, (4, 5)), batch_size=6, verbose=0)
    layer.batch_moving_mean = layer.batch_moving_var = False
    traces = []
    original_call = BatchLayerNormalization.call
    monkeypatch.setattr(
        BatchLayerNormalization,
        "call",
        lambda self, *a, **k: traces.append(1) or original_call(self, *a, **k),
    )
    x = batch(rng, 14, (4, 5))
    outputs = {}
    for m in (None, 2, 7):
        layer.set_group_for_inference(m)
        outputs[m] = model.predict(x, batch_size=14, verbose=0)
    assert len(traces) <= 1  # the first predict's trace served every group size
    monkeypatch.setattr(BatchLayerNormalization, "call", original_call)
    for m in (None, 2, 7):
        layer.set_group_for_inference(None)
        expected = batch_by_batch(lambda p: layer(p, training=False), x, m or len(x))
        assert error(outputs[m], expected) <= TOLERANCE, m
    assert error(outputs[2], outputs[7]) > 1e-3  # the grouping took effect


def test_grouped_inference_is_not_saved_but_a_chosen_group_size_is(tmp_path):
    model = keras.Sequential([keras.Input((5,)), BatchLayerNormalization(name="bln")])
    with grouped_inference(model, 4):
        assert model.get_layer("bln").set_group_for_inference  # set inside the block
        model.save(tmp_path / "during.keras")
    loaded = keras.saving.load_model(tmp_path / "during.keras")
    assert loaded.get_layer("bln").inference_group_size is None
    assert float(keras.ops.convert_to_numpy(loaded.get_layer("bln")._group_variable)) == 0.0

    model.get_layer("bln").inference_group_size = 3  # on purpose: kept
    model.save(tmp_path / "chosen.keras")
    loaded = keras.saving.load_model(tmp_path / "chosen.keras")
    assert loaded.get_layer("bln").inference_group_size == 3
    assert float(keras.ops.convert_to_numpy(loaded.get_layer("bln")._group_variable)) == 3.0


def test_grouped_inference_restores_the_chosen_group_size():
    model = keras.Sequential([keras.Input((5,)), BatchLayerNormalization(inference_group_size=3)])
    (layer,) = [layer for layer in model.layers if isinstance(layer, BatchLayerNormalization)]
    with grouped_inference(model, 8):
        assert float(keras.ops.convert_to_numpy(layer._group_variable)) == 8.0
    assert float(keras.ops.convert_to_numpy(layer._group_variable)) == 3.0


@pytest.mark.parametrize("value", [-1, 2.5, True, "4"])
def test_group_size_is_validated(value):
    with pytest.raises(ValueError, match="inference_group_size"):
        BatchLayerNormalization(inference_group_size=value)


# --- the search evaluates in large grouped batches ---------------------------------------------


def stored(study):
    """{(configuration, epoch): value} over the study's complete trials."""
    return {
        (config_of(t), epoch): value
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        for epoch, value in t.intermediate_values.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["shared", "per-trial"])
def test_a_grouped_search_stores_the_values_of_batch_by_batch_evaluation(data, storage, strategy):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    # 48 validation samples in batches of 5: nine full groups and a remainder of 3.
    kwargs = dict(storage=storage, epochs=2, batch_size=5, strategy=strategy, pruner=None)
    if strategy == "per-trial":  # per-trial trains every configuration: four are enough here
        kwargs.update(n_trials=4)

    def sampler():
        return None if strategy == "shared" else optuna.samplers.RandomSampler(seed=1)

    grouped = bln_search.search(
        models.build, data, study_name="grouped", sampler=sampler(), **kwargs
    )
    one_by_one = bln_search.search(
        models.build,
        data,
        study_name="batch-by-batch",
        sampler=sampler(),
        evaluation_batch_size=5,
        **kwargs,
    )
    grouped_values, expected = stored(grouped), stored(one_by_one)
    assert set(grouped_values) == set(expected) and len(expected) >= 8
    for key, value in expected.items():
        assert grouped_values[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # Configurations that read the current batch differ from those that do not: the
    # grouping mattered, and matched.
    assert len({round(v, 5) for v in expected.values()}) > 2


def test_the_evaluation_batch_is_whole_groups_within_the_budget():
    import keras

    from bln_search.evaluation import MEMORY_BUDGET, activation_bytes, evaluation_batch_size

    small = models.build()
    assert evaluation_batch_size(small, 5, samples=48) == 45  # every whole group at once
    assert evaluation_batch_size(small, 1, samples=48) == 48
    assert evaluation_batch_size(small, 64, samples=48) == 64  # at least one group
    assert evaluation_batch_size(small, 5, samples=48, requested=12) == 10
    assert evaluation_batch_size(small, 5, samples=48, requested=3) == 5
    big = keras.Sequential([keras.Input((64, 64, 32)), keras.layers.Conv2D(64, 3, padding="same")])
    per_sample = activation_bytes(big)
    assert per_sample == (64 * 64 * 32 + 64 * 64 * 64) * 4  # the input and the convolution
    chosen = evaluation_batch_size(big, 3, samples=10_000)
    assert chosen % 3 == 0 and chosen * per_sample <= MEMORY_BUDGET < (chosen + 3) * per_sample


def test_the_validation_dataset_keeps_its_order_and_has_no_autotuner(data):
    """Autotuning a cached in-memory pipeline gains nothing and costs every evaluate ~20 ms."""
    x, y = data.validation
    dataset = data.validation_dataset(10)
    assert not dataset.options().autotune.enabled
    batches = list(dataset)
    assert [len(b[0]) for b in batches] == [len(x[i : i + 10]) for i in range(0, len(x), 10)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


@pytest.mark.slow
def test_train_and_its_validation_metrics_are_those_of_batch_by_batch_evaluation(data):
    config = bln_search.StatisticsConfig(False, False, True, False)  # reads the current batch
    model, metrics, _ = bln_search.train(models.build, data, config, epochs=2, batch_size=5)
    layer = bln_search.find_bln_layers(model)[0]
    assert float(keras.ops.convert_to_numpy(layer._group_variable)) == 0.0  # not left grouped
    x, y = data.validation
    one_by_one = model.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    assert metrics["val_loss"] == pytest.approx(one_by_one["loss"], rel=1e-5)
    whole_batch = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert abs(whole_batch["loss"] - one_by_one["loss"]) > 1e-4  # the grouping mattered


def _segment_moments(x, group_size):
    """The general path of `grouped_batch_moments` (JAX, PyTorch, XLA), called directly."""
    from bln_search import layer_gradient

    original = layer_gradient._reshape_allowed
    layer_gradient._reshape_allowed = lambda: False
    try:
        return layer_gradient.grouped_batch_moments(x, group_size)
    finally:
        layer_gradient._reshape_allowed = original


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("group_size", [0, 1, 2, 7, 25, 200])
def test_tensorflow_s_grouped_moments_by_reshape_equal_the_segment_sums(rank, group_size):
    """Without XLA, TensorFlow groups by reshaping (a third of the segment sums' time)."""
    from bln_search.layer_gradient import _grouped_moments_by_reshape

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reshape path is TensorFlow's")
    x = batch(np.random.default_rng(int(rank[0])), 51, SHAPES[rank])  # 51: a remainder for 2, 7, 25
    size = keras.ops.convert_to_tensor(group_size, "int32")
    for got, want in zip(_grouped_moments_by_reshape(x, size), _segment_moments(x, size)):
        assert got.shape == want.shape
        assert error(got, want) <= 1e-6


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_repeated_evaluation_gives_evaluate_s_values_in_all_16_configurations(
    data, steps_per_execution
):
    """The shared strategy's 16 evaluations an epoch skip `evaluate`'s per-call setup."""
    from bln_search.evaluation import RepeatedEvaluation

    keras.utils.set_random_seed(0)
    model = models.build()
    model.compile(
        optimizer="sgd",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    (x, y), _ = data.train, data.validation
    model.fit(x, y, batch_size=7, epochs=1, verbose=0)
    validation = data.validation_dataset(21)  # 48 samples: 21, 21 and 6
    repeated = RepeatedEvaluation(model, validation)
    assert (repeated.steps is None) == (steps_per_execution != 1)  # else `evaluate` itself
    with grouped_inference(model, 7):
        for config in all_configurations():
            configure(model, config)
            got = repeated()
            assert got == model.evaluate(validation, verbose=0, return_dict=True), config.label
