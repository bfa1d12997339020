"""What the paper's two studies share: their datasets through Keras's cache, and the paper's splits.

The BLN paper (Ziaee & Çano, 2022) trained on CIFAR-10 and IMDB as loaded by
`keras.datasets`, held 5,000 training samples out for validation after a shuffle
seeded 100, and ran once on all the remaining training samples and once on 20 %
of them (with 20 % of the validation samples too). `splits` makes those parts.

Datasets are downloaded once, by Keras, into its cache (`$KERAS_HOME/datasets`,
by default `~/.keras/datasets`) and read from there afterwards. Offline and not
cached, loading raises `DatasetUnavailable`: one line naming the dataset, its
size and the file to put into the cache, which bln-search shows as its `error:`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from bln_search.errors import DatasetUnavailable

SEED = 100
"""The paper's seed: its validation shuffle and its Glorot-uniform initializers."""

VALIDATION_SAMPLES = 5000
"""Training samples held out for validation (the paper's `number_valid_sampels`)."""

FRACTION = 0.2
"""The paper's reduced runs: 20 % of the training part and of the validation part."""


@dataclass(frozen=True)
class Dataset:
    """A file `keras.utils.get_file` keeps in Keras's cache, as `keras.datasets` names it."""

    name: str
    size: str
    origin: str
    fname: str
    file_hash: str
    extract: bool = False

    @property
    def cached_name(self) -> str:
        """The file's name in the cache folder (`get_file` renames archives it extracts)."""
        return f"{self.fname}_archive" if self.extract else self.fname

    def fetch(self) -> str:
        """The cached file (or, for an archive, its extracted folder), downloaded if missing."""
        import keras

        return through_cache(
            self,
            lambda: keras.utils.get_file(
                fname=self.fname, origin=self.origin, extract=self.extract, file_hash=self.file_hash
            ),
        )


CIFAR10 = Dataset(  # as keras.datasets.cifar10.load_data names and checks it
    name="CIFAR-10",
    size="163 MB",
    origin="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    fname="cifar-10-batches-py-target",
    file_hash="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    extract=True,
)
IMDB = Dataset(  # as keras.datasets.imdb.load_data names and checks it
    name="IMDB",
    size="17 MB",
    origin="https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb.npz",
    fname="imdb.npz",
    file_hash="69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
)


def cache_folder() -> str:
    """The folder `keras.utils.get_file` reads and writes: `$KERAS_HOME/datasets` (`~/.keras`
    by default; `/tmp/.keras` when that is not writable), decided the way Keras decides it."""
    from keras.src.backend.config import keras_home  # what get_file reads; no public name

    base = os.path.expanduser(keras_home())
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "datasets")


def through_cache(dataset: Dataset, load):
    """`load()`, with a failed download of an uncached dataset turned into one clear line."""
    target = os.path.join(cache_folder(), dataset.cached_name)
    cached = os.path.exists(target)
    try:
        return load()
    except Exception as error:
        if os.path.exists(target):  # the file is there: reading it failed, not downloading it
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        state = (
            "was in Keras's cache but did not match its published hash"
            if cached  # and Keras removed it after trying to download it again
            else "is not in Keras's cache"
        )
        raise DatasetUnavailable(
            f"{dataset.name} ({dataset.size}) {state} and could not be downloaded ({reason}):"
            f" download {dataset.origin} and save it as {target} (cache folder"
            f" {os.path.dirname(target)}; set KERAS_HOME to use another)"
        ) from error


def splits(x, y, fraction: float = 1.0):
    """((x_train, y_train), (x_val, y_val)): the first `VALIDATION_SAMPLES` after a shuffle seeded
    `SEED` (scikit-learn's `shuffle`, as the paper) validate; the first `fraction` of each part is kept."""
    from sklearn.utils import shuffle

    order = shuffle(np.arange(len(x)), random_state=SEED)
    validation, train = order[:VALIDATION_SAMPLES], order[VALIDATION_SAMPLES:]
    if fraction < 1.0:
        train = train[: round(len(train) * fraction)]
        validation = validation[: round(len(validation) * fraction)]
    return (x[train], y[train]), (x[validation], y[validation])
