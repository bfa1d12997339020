"""A GRU that reads each 8x8 digit row by row, with BLN on the per-step features.

bln-search run --model studies/digits_rnn.py:build --epochs 3
"""

from __future__ import annotations

import keras

from bln_search import BatchLayerNormalization

try:  # imported as studies.digits_cnn, or loaded by path (bln-search run --model studies/...py:build)
    from .digits import splits
except ImportError:
    from digits import splits


def build() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Dense(32),
            BatchLayerNormalization(),  # batch statistics per time step, as published
            keras.layers.GRU(32),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_rnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def load_data():
    train, validation, _ = splits(sequence=True)
    return train, validation


def load_test():
    return splits(sequence=True)[2]
