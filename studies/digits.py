"""scikit-learn's bundled 8x8 digits, split once into train / validation / test.

The split is fixed (seeded), so every study, worker and final training sees the
same data. The test part is never used for selection.
"""

from __future__ import annotations

import numpy as np


def splits(sequence: bool = False):
    """((x_train, y_train), (x_val, y_val), (x_test, y_test)); images (8, 8, 1), or rows (8, 8) if sequence."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")
    if not sequence:
        x = x[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])
