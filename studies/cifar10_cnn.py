"""The paper's CIFAR-10 CNN (LeNet-5-like, tanh), with BLN after each pooling and hidden dense layer.

As in the paper's notebooks: Glorot-uniform initializers seeded 100, Adam(0.002,
0.9, 0.999, 1e-8), categorical cross-entropy from logits, images standardized
per pixel and channel with the 50,000 training images' mean and deviation, 5,000
of them held out for validation; the paper trained 15 epochs at batch sizes 25 and 1.

    bln-search run --model studies/cifar10_cnn.py:build --epochs 15 --batch-sizes 1,25
    bln-search run --model studies/cifar10_cnn.py:build --data studies/cifar10_cnn.py:load_data_20 ...

`load_data`: all 45,000 remaining training images, 5,000 for validation;
`load_data_20`: 20 % of each (9,000, i.e. 360 batches of 25, and 1,000);
`load_test`: the 10,000 test images. The first call downloads CIFAR-10 (163 MB)
into Keras's cache.
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np

from bln_search import BatchLayerNormalization

try:  # imported as studies.cifar10_cnn, or loaded by path (bln-search run --model studies/...py:build)
    from . import paper
except ImportError:
    import paper


def _glorot():
    return keras.initializers.GlorotUniform(seed=paper.SEED)


def build() -> keras.Model:
    def dense(units, activation=None):
        return keras.layers.Dense(units, activation=activation, kernel_initializer=_glorot())

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(
                6, 5, padding="same", activation="tanh", kernel_initializer=_glorot()
            ),
            keras.layers.AveragePooling2D(2),
            BatchLayerNormalization(),
            keras.layers.Conv2D(
                16, 5, padding="valid", activation="tanh", kernel_initializer=_glorot()
            ),
            keras.layers.AveragePooling2D(2),
            BatchLayerNormalization(),
            keras.layers.Flatten(),
            dense(120, "tanh"),
            BatchLayerNormalization(),
            dense(84, "tanh"),
            BatchLayerNormalization(),
            dense(10),  # logits
        ],
        name="cifar10_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.002, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@functools.lru_cache(maxsize=1)
def _arrays(folder: str):
    """((x_train, y_train), (x_test, y_test)), standardized and one-hot, from the extracted folder.

    Read batch by batch with Keras's own CIFAR reader rather than through
    `keras.datasets.cifar10.load_data`, which assumes exactly 10,000 images per
    batch file: same files, same cache, but any size (the tests' small stand-ins).
    """
    from keras.src.datasets.cifar import load_batch  # keras.datasets.cifar10's reader

    path = os.path.join(folder, "cifar-10-batches-py")
    parts = [load_batch(os.path.join(path, f"data_batch_{i}")) for i in range(1, 6)]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([np.asarray(y) for _, y in parts])
    x_test, y_test = load_batch(os.path.join(path, "test_batch"))
    x_train, x_test = (x.transpose(0, 2, 3, 1) for x in (x_train, np.asarray(x_test)))
    # The paper's StandardScaler: each pixel and channel standardized with the training images'.
    mean = x_train.mean(axis=0, dtype="float64").astype("float32")
    std = x_train.std(axis=0, dtype="float64").astype("float32")
    std[std == 0] = 1.0
    x_train, x_test = (x.astype("float32") for x in (x_train, x_test))
    for x in (x_train, x_test):  # in place: the full set is 600 MB in float32
        x -= mean
        x /= std
    y_train, y_test = (
        keras.utils.to_categorical(y, 10).astype("float32") for y in (y_train, y_test)
    )
    return (x_train, y_train), (x_test, y_test)


def _load():
    return _arrays(paper.CIFAR10.fetch())


def load_data():
    """The paper's full run: 45,000 training and 5,000 validation images."""
    return paper.splits(*_load()[0])


def load_data_20():
    """The paper's 20 % run: 9,000 training images (360 batches of 25) and 1,000 validation."""
    return paper.splits(*_load()[0], fraction=paper.FRACTION)


def load_test():
    """The 10,000 test images (reported for the winners only, never used to choose)."""
    return _load()[1]
