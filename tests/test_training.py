"""Final training through the Python API: continuing a saved model."""

from __future__ import annotations

import keras
import numpy as np

import bln_search
from tests.fixtures import models


def test_a_saved_model_continues_from_its_own_weights_and_epoch(data, tmp_path):
    config = bln_search.StatisticsConfig(True, True, False, False)
    model, _, _ = bln_search.train(models.build, data, config, epochs=1)
    model.optimizer.learning_rate.assign(0.0)  # from here on, training keeps the saved weights
    model.save(tmp_path / "one.keras")
    saved = [w.numpy() for w in model.trainable_weights]

    more, metrics, epoch = bln_search.train(
        models.build, data, config, epochs=3, initial_epoch=1, initial_model=tmp_path / "one.keras"
    )
    assert more.history.epoch == [1, 2] and epoch in (2, 3)  # Keras counts from 0
    for weight, before in zip(more.trainable_weights, saved, strict=True):
        np.testing.assert_array_equal(weight.numpy(), before)
    keras.utils.set_random_seed(0)
    fresh = models.build()  # what `train` would start from, ignoring the saved model
    assert not np.array_equal(fresh.trainable_weights[0].numpy(), saved[0])
