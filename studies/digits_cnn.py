"""A small CNN in the spirit of the paper's: conv -> BLN -> ReLU -> pool, twice, then a classifier.

bln-search run --model studies/digits_cnn.py:build --epochs 3
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
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same"),
            BatchLayerNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same"),
            BatchLayerNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def load_data():
    train, validation, _ = splits()
    return train, validation


def load_test():
    return splits()[2]
