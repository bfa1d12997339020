"""Is a win real? Welch's t-test of each candidate against the winner, over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05
"""Significance level: a candidate whose difference to the winner has p >= ALPHA is a tie."""


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN when either side has < 2 values.

    Welch's test, because seeds give a handful of values per configuration and
    nothing says two configurations vary equally from seed to seed (a
    configuration that uses current-batch statistics is often noisier).
    Identical constant samples give p = 1 (no evidence of a difference).
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if len(set(a)) == 1 and len(set(b)) == 1:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def mark_ties(samples: dict, winner, alpha: float = ALPHA) -> dict:
    """{candidate: (p-value vs the winner, verdict)}; verdict is "winner", "tie", "worse" or "n/a"."""
    verdicts = {}
    for candidate, values in samples.items():
        if candidate == winner:
            verdicts[candidate] = (math.nan, "winner")
            continue
        p = welch_p_value(values, samples[winner])
        verdict = "n/a" if math.isnan(p) else ("tie" if p >= alpha else "worse")
        verdicts[candidate] = (p, verdict)
    return verdicts
