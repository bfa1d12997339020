"""An independent NumPy (float64) implementation of BLN, written from the spec in BLN.md.

It keeps the list of every step's statistics since the last reset and averages
them when asked, instead of the layer's running update, so the two share no code
and no algorithm.

Masks (shape `x.shape[:-1]`, `True` = keep) are handled position by position with
explicit loops: a masked sample is left out of the batch moments at that position,
and a position with no unmasked sample in a step takes no part in that step's
population average (it keeps its previous value).
"""

from __future__ import annotations

import itertools

import numpy as np

EPSILON = 1e-3
DELTA = 1e-4


def _moments(x, axis):
    mean = x.mean(axis=axis, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axis, keepdims=True)


def _masked_batch_moments(x, mask):
    """Per position: mean and biased variance of the unmasked samples (0 and 0 if none), count."""
    positions = x.shape[1:-1]
    mean = np.zeros((1, *x.shape[1:]))
    var = np.zeros((1, *x.shape[1:]))
    count = np.zeros(positions, dtype=int)
    for index in itertools.product(*(range(d) for d in positions)):
        kept = [x[(s, *index)] for s in range(x.shape[0]) if mask[(s, *index)]]
        count[index] = len(kept)
        if kept:
            kept = np.stack(kept)
            mean[(0, *index)] = kept.mean(axis=0)
            var[(0, *index)] = ((kept - kept.mean(axis=0)) ** 2).mean(axis=0)
    return mean, var, count


def _mix(x, mu_b, var_b, mu_f, var_f, m, gamma, beta):
    c = x.shape[-1]
    xb = (x - mu_b) / np.sqrt(var_b + EPSILON)
    xf = (x - mu_f) / np.sqrt(var_f + EPSILON)
    xhat = ((1.0 / m - DELTA) * xf + (1.0 - 1.0 / m - DELTA) * xb) / np.sqrt(c)
    return gamma * xhat + beta


class ReferenceBLN:
    """BLN with plain per-epoch averages (momentum=None), or EMAs when momentum is set."""

    def __init__(self, gamma, beta, momentum=None):
        self.gamma = np.asarray(gamma, np.float64)
        self.beta = np.asarray(beta, np.float64)
        self.momentum = momentum
        # (mu_b, corrected var_b, mean mu_f, mean var_f, m, per-position count) since last reset
        self.steps = []
        self.ema = None
        self.last_population = None

    def reset(self):
        if self.steps:
            self.last_population = self.population()
        self.steps = []

    def train(self, x, mask=None):
        x = np.asarray(x, np.float64)
        m = x.shape[0]
        mask = np.ones(x.shape[:-1], bool) if mask is None else np.asarray(mask, bool)
        mu_b, var_b, count = _masked_batch_moments(x, mask)
        mu_f, var_f = _moments(x, -1)
        corrected = np.array(var_b[0])
        mean_mu_f = np.zeros(mu_f.shape[1:])
        mean_var_f = np.zeros(var_f.shape[1:])
        for index in np.ndindex(*count.shape):
            n = count[index]
            if n > 1:
                corrected[index] *= n / (n - 1)
            kept = [s for s in range(m) if mask[(s, *index)]]
            if kept:
                mean_mu_f[index] = np.mean([mu_f[(s, *index)] for s in kept], axis=0)
                mean_var_f[index] = np.mean([var_f[(s, *index)] for s in kept], axis=0)
        record = (mu_b[0], corrected, mean_mu_f, mean_var_f, m, count)
        self.steps.append(record)
        if self.momentum is not None:
            if self.ema is None:
                self.ema = self._initial(mu_b.shape[1:], mu_f.shape[1:])
            for index in np.ndindex(*count.shape):
                if count[index]:
                    for old, new in zip(self.ema, record[:4]):
                        old[index] = self.momentum * old[index] + (1 - self.momentum) * new[index]
        return _mix(x, mu_b, var_b, mu_f, var_f, m, self.gamma, self.beta)

    @staticmethod
    def _initial(shape_b, shape_f):
        return [np.zeros(shape_b), np.ones(shape_b), np.zeros(shape_f), np.ones(shape_f)]

    def population(self):
        """(mu_b, var_b, mu_f, var_f, training batch size)."""
        if not self.steps:
            return self.last_population
        m = max(s[4] for s in self.steps)
        if self.momentum is not None:
            return (*[np.array(e) for e in self.ema], m)
        first = self.steps[0]
        if self.last_population is not None:
            stats = [np.array(s) for s in self.last_population[:4]]
        else:
            stats = self._initial(first[0].shape, first[2].shape)
        for index in np.ndindex(*first[5].shape):
            seen = [step for step in self.steps if step[5][index]]
            for i in range(4) if seen else ():
                stats[i][index] = np.mean([step[i][index] for step in seen], axis=0)
        return (*stats, m)

    def infer(self, x, flags, mask=None):
        """Inference under flags (batch_moving_mean, batch_moving_var, feature_moving_mean, feature_moving_var)."""
        x = np.asarray(x, np.float64)
        mask = np.ones(x.shape[:-1], bool) if mask is None else np.asarray(mask, bool)
        mu_b, var_b, _ = _masked_batch_moments(x, mask)
        mu_f, var_f = _moments(x, -1)
        population = self.population()
        if population is None:  # never trained: mean 0, variance 1, current batch size
            m = x.shape[0]
            pop = (
                np.zeros_like(mu_b),
                np.ones_like(var_b),
                np.zeros_like(mu_f[:1]),
                np.ones_like(var_f[:1]),
            )
        else:
            *pop, m = population
        chosen = [
            p if flag else cur for flag, p, cur in zip(flags, pop, (mu_b, var_b, mu_f, var_f))
        ]
        return _mix(x, *chosen, m, self.gamma, self.beta)
