"""Agreement of judge scores with human scores: Spearman and Pearson, with bootstrap intervals.

Spearman's ρ is Pearson's r on ranks, with tied values given the average of the ranks they span
(VScore takes only five values, so ties are the rule, and giving them arbitrary distinct ranks
would make ρ depend on the order of the data). Intervals are percentile bootstrap intervals over
items: the (prediction, label) pairs are resampled together with replacement, the statistic is
recomputed on each resample, and the interval is the (α/2, 1 − α/2) quantiles of those values.
A resample whose statistic is undefined (a constant sample) is left out of the quantiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Correlation",
    "average_ranks",
    "bootstrap_interval",
    "correlate",
    "pearson",
    "spearman",
]

F64 = npt.NDArray[np.float64]
Statistic = Callable[[F64, F64], float]


def _pair(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[F64, F64]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"expected two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("scores must be finite (drop unscored items before correlating)")
    return a, b


def average_ranks(x: npt.ArrayLike) -> F64:
    """1-based ranks of ``x``, ties sharing the mean of the ranks they occupy."""
    values = np.asarray(x, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_run = np.r_[True, ordered[1:] != ordered[:-1]]
    run = np.cumsum(starts_run) - 1
    first = np.flatnonzero(starts_run)
    last = np.r_[first[1:], len(values)] - 1
    ranks = np.empty(len(values))
    ranks[order] = ((first + last) / 2 + 1)[run]
    return ranks


def pearson(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Pearson's r; NaN when either sample is constant (r is undefined there)."""
    a, b = _pair(x, y)
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b)) / denominator if denominator > 0 else float("nan")


def spearman(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Spearman's ρ with average ranks for ties (as ``scipy.stats.spearmanr``)."""
    a, b = _pair(x, y)
    return pearson(average_ranks(a), average_ranks(b))


def bootstrap_interval(
    statistic: Statistic,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` over paired resamples of items.

    Deterministic for a seed. NaN bounds when no resample gives a defined statistic.
    """
    a, b = _pair(x, y)
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1: {confidence}, {resamples}")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(a), size=(resamples, len(a)))
    values = np.array([statistic(a[i], b[i]) for i in indices])
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its bootstrap interval and the number of items."""

    value: float
    low: float
    high: float
    n: int


def correlate(
    predictions: npt.ArrayLike,
    labels: npt.ArrayLike,
    method: Literal["spearman", "pearson"] = "spearman",
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """The coefficient of ``predictions`` against ``labels`` with its percentile interval."""
    statistic: Statistic = spearman if method == "spearman" else pearson
    a, b = _pair(predictions, labels)
    low, high = bootstrap_interval(
        statistic, a, b, resamples=resamples, confidence=confidence, seed=seed
    )
    return Correlation(statistic(a, b), low, high, len(a))
