"""An independent NumPy (float64) implementation of BLN, written from the spec in BLN.md.

It keeps the list of every step's statistics since the last reset and averages
them when asked, instead of the layer's running update, so the two share no code
and no algorithm.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-3
DELTA = 1e-4


def _moments(x, axis):
    mean = x.mean(axis=axis, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axis, keepdims=True)


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
        self.steps = []  # (mu_b, corrected var_b, mean mu_f, mean var_f, m) since last reset
        self.ema = None
        self.last_population = None

    def reset(self):
        if self.steps:
            self.last_population = self.population()
        self.steps = []

    def train(self, x):
        x = np.asarray(x, np.float64)
        m = x.shape[0]
        mu_b, var_b = _moments(x, 0)
        mu_f, var_f = _moments(x, -1)
        corrected = var_b * m / (m - 1) if m > 1 else var_b
        record = (mu_b[0], corrected[0], mu_f.mean(axis=0), var_f.mean(axis=0), m)
        self.steps.append(record)
        if self.momentum is not None:
            if self.ema is None:
                shape_b, shape_f = mu_b.shape[1:], mu_f.shape[1:]
                self.ema = [
                    np.zeros(shape_b),
                    np.ones(shape_b),
                    np.zeros(shape_f),
                    np.ones(shape_f),
                ]
            self.ema = [
                self.momentum * old + (1 - self.momentum) * new
                for old, new in zip(self.ema, record[:4])
            ]
        return _mix(x, mu_b, var_b, mu_f, var_f, m, self.gamma, self.beta)

    def population(self):
        """(mu_b, var_b, mu_f, var_f, training batch size)."""
        if not self.steps:
            return self.last_population
        if self.momentum is not None:
            return (*self.ema, max(s[4] for s in self.steps))
        n = len(self.steps)
        stats = [sum(step[i] for step in self.steps) / n for i in range(4)]
        return (*stats, max(s[4] for s in self.steps))

    def infer(self, x, flags):
        """Inference under flags (batch_moving_mean, batch_moving_var, feature_moving_mean, feature_moving_var)."""
        x = np.asarray(x, np.float64)
        mu_b, var_b = _moments(x, 0)
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
