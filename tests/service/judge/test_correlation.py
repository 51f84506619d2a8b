"""Spearman with average ranks, Pearson, and percentile bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from surety_serving.judge.correlation import (
    average_ranks,
    bootstrap_interval,
    correlate,
    pearson,
    spearman,
)

pytestmark = pytest.mark.unit


def test_ties_share_the_average_of_their_ranks() -> None:
    np.testing.assert_array_equal(average_ranks([30, 10, 20, 20, 20]), [5, 1, 3, 3, 3])
    np.testing.assert_array_equal(average_ranks([2.0, 2.0]), [1.5, 1.5])
    np.testing.assert_array_equal(average_ranks([3.0, 1.0, 2.0]), [3, 1, 2])


def test_spearman_matches_scipy_on_heavily_tied_scores() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    human = rng.integers(0, 6, 300).astype(float)
    judged = np.clip(np.round(human + rng.normal(0, 1.5, 300)), 1, 5)  # VScore-like ties
    assert spearman(judged, human) == pytest.approx(stats.spearmanr(judged, human)[0], abs=1e-12)


def test_pearson_matches_numpy_and_is_undefined_for_constant_input() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))
    assert spearman(np.exp(x), x) == pytest.approx(1.0)  # ranks only
    assert pearson(np.exp(x), x) < 0.99


def test_non_finite_or_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite"):
        spearman([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one length"):
        pearson([1.0, 2.0], [1.0, 2.0, 3.0])


def test_bootstrap_interval_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    first = correlate(x, y, "spearman", seed=3)
    assert correlate(x, y, "spearman", seed=3) == first
    assert first.low < first.value < first.high and first.n == 200
    assert 0.2 < first.high - first.low < 0.4  # ~4 standard errors of ρ at n = 200
    other = correlate(x, y, "spearman", seed=4)
    assert (other.low, other.high) != (first.low, first.high)
    more = correlate(np.tile(x, 4), np.tile(y, 4), "pearson", seed=3)
    assert more.high - more.low < first.high - first.low


def test_bootstrap_of_a_perfect_relation_and_of_constant_resamples() -> None:
    x = np.arange(20.0)
    np.testing.assert_allclose(bootstrap_interval(spearman, x, 2 * x + 1), (1.0, 1.0))
    assert all(np.isnan(bootstrap_interval(pearson, [1.0], [2.0], resamples=10)))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(pearson, x, x, confidence=1.5)
