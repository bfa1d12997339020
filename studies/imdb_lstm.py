"""The paper's IMDB sentiment model: two LSTMs and a dense layer, each followed by BLN.

Reviews keep the 20,000 most frequent words and are cut or padded to 80 tokens
(Keras's defaults: both at the front), as in the paper's notebooks; LSTMs with
dropout and recurrent dropout 0.2, Glorot-uniform initializers seeded 100 (the
recurrent kernels too), Adam(0.005, 0.9, 0.999, 1e-8), binary cross-entropy from
a logit; 5,000 training reviews held out for validation. The notebooks trained 5
epochs at batch sizes 25 and 1.

    bln-search run --model studies/imdb_lstm.py:build --epochs 5 --batch-sizes 1,25
    bln-search run --model studies/imdb_lstm.py:build --data studies/imdb_lstm.py:load_data_20 ...

`load_data`: the 20,000 remaining training reviews, 5,000 for validation;
`load_data_20`: 20 % of each (4,000, i.e. 160 batches of 25, and 1,000);
`load_test`: the 25,000 test reviews. The first call downloads IMDB (17 MB) into
Keras's cache.
"""

from __future__ import annotations

import functools

import keras
import numpy as np

from bln_search import BatchLayerNormalization

try:  # imported as studies.imdb_lstm, or loaded by path (bln-search run --model studies/...py:build)
    from . import paper
except ImportError:
    import paper

VOCABULARY = 20000
LENGTH = 80


def _glorot():
    return keras.initializers.GlorotUniform(seed=paper.SEED)


def build() -> keras.Model:
    def lstm(units, return_sequences):
        return keras.layers.LSTM(
            units,
            dropout=0.2,
            recurrent_dropout=0.2,
            return_sequences=return_sequences,
            kernel_initializer=_glorot(),
            recurrent_initializer=_glorot(),
        )

    model = keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 512, embeddings_initializer=_glorot()),
            lstm(128, return_sequences=True),
            BatchLayerNormalization(),  # batch statistics per time step, as published
            lstm(64, return_sequences=False),
            BatchLayerNormalization(),
            keras.layers.Dense(32, activation="tanh", kernel_initializer=_glorot()),
            BatchLayerNormalization(),
            keras.layers.Dense(1, kernel_initializer=_glorot()),  # a logit
        ],
        name="imdb_lstm",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.005, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    return model


@functools.lru_cache(maxsize=1)
def _arrays(cache: str):
    """((x_train, y_train), (x_test, y_test)) through `keras.datasets.imdb`, padded to `LENGTH`.

    `cache` (Keras's cache folder) only keys this memo: `imdb.load_data` finds the file itself.
    """
    (x_train, y_train), (x_test, y_test) = paper.through_cache(
        paper.IMDB, lambda: keras.datasets.imdb.load_data(num_words=VOCABULARY)
    )
    x_train, x_test = (
        keras.utils.pad_sequences(x, maxlen=LENGTH).astype("int32") for x in (x_train, x_test)
    )
    y_train, y_test = (np.asarray(y, dtype="float32")[:, None] for y in (y_train, y_test))
    return (x_train, y_train), (x_test, y_test)


def _load():
    return _arrays(paper.cache_folder())


def load_data():
    """The paper's full run: 20,000 training and 5,000 validation reviews."""
    return paper.splits(*_load()[0])


def load_data_20():
    """The paper's 20 % run: 4,000 training reviews (160 batches of 25) and 1,000 validation."""
    return paper.splits(*_load()[0], fraction=paper.FRACTION)


def load_test():
    """The 25,000 test reviews (reported for the winners only, never used to choose)."""
    return _load()[1]
