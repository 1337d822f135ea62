"""Confidence intervals for the numbers we print.

Every accuracy is a proportion over ``n`` independent examples; every mean
(IoU, CIDEr per example) a sample mean. Intervals are two-sided 95%:
Wilson's score interval for proportions (well-behaved at 0 and 1, unlike the
normal approximation) and the normal interval ``mean +- 1.96 * sd / sqrt(n)``
for means. Differences of two proportions on independent sets use the
normal interval of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Z95", "proportion_ci", "mean_ci", "difference_ci", "format_ci"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def proportion_ci(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``, as (low, high) in [0, 1]."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): the normal 95% interval of a sample mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"),) * 3
    m = float(x.mean())
    if x.size < 2:
        return (m, m, m)
    half = z * float(x.std(ddof=1)) / math.sqrt(x.size)
    return (m, m - half, m + half)


def difference_ci(p1: float, n1: int, p2: float, n2: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of ``p1 - p2`` for proportions on independent sets of n1, n2 examples."""
    if n1 <= 0 or n2 <= 0:
        return (float("nan"), float("nan"))
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return (p1 - p2 - half, p1 - p2 + half)


def format_ci(value: float, low: float, high: float, scale: float = 100.0, digits: int = 1) -> str:
    """'52.3 [49.2, 55.4]' (values scaled by ``scale``, e.g. fractions to percent)."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(value * scale)} [{f.format(low * scale)}, {f.format(high * scale)}]"
