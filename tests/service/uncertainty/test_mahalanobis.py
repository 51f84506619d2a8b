"""Mahalanobis detector: estimator, invariances, degenerate features, ensemble, artifacts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance

from surety_serving.uncertainty.mahalanobis import TapGaussian, prepared

from .conftest import gaussian_classes

pytestmark = pytest.mark.unit

MEANS = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])
COV = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])


def direct_score(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    diff = x[:, None, :] - means[None, :, :]
    return -np.einsum("bcf,fg,bcg->bc", diff, precision, diff).min(axis=1)


def test_fit_converges_to_the_true_gaussians(rng: np.random.Generator) -> None:
    x, y = gaussian_classes(rng, 20_000, MEANS, COV)
    gaussian = TapGaussian.fit(x, y, 3)
    queries = rng.normal(size=(50, 3)) * 3
    expected = direct_score(queries, MEANS, np.linalg.inv(COV))
    np.testing.assert_allclose(gaussian.score(queries), expected, rtol=0.05, atol=0.05)
    # The score is maximal (zero) at each class mean.
    at_means = gaussian.score(MEANS)
    assert np.all(at_means <= 0)
    assert np.all(at_means > -0.01)


def test_matches_the_pooled_mle_and_pseudo_inverse_of_sklearn(rng: np.random.Generator) -> None:
    x, y = gaussian_classes(rng, 200, MEANS, COV)
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    precision = EmpiricalCovariance(assume_centered=False).fit(x - means[y]).precision_
    queries = rng.normal(size=(40, 3)) * 4
    np.testing.assert_allclose(
        TapGaussian.fit(x, y, 3).score(queries), direct_score(queries, means, precision), rtol=1e-8
    )


def test_scores_are_invariant_under_invertible_affine_maps(rng: np.random.Generator) -> None:
    x, y = gaussian_classes(rng, 300, MEANS, COV)
    a = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    b = rng.normal(size=3) * 10
    queries = rng.normal(size=(30, 3)) * 3
    plain = TapGaussian.fit(x, y, 3).score(queries)
    mapped = TapGaussian.fit(x @ a.T + b, y, 3).score(queries @ a.T + b)
    np.testing.assert_allclose(mapped, plain, rtol=1e-7, atol=1e-9)
    # A Euclidean score would change under the same map.
    assert not np.allclose(
        np.linalg.norm(queries @ a.T + b, axis=1), np.linalg.norm(queries, axis=1)
    )


@pytest.mark.parametrize(
    "case", ["fewer samples than features", "duplicated channel", "dead channel"]
)
def test_rank_deficient_features_give_finite_scores(rng: np.random.Generator, case: str) -> None:
    if case == "fewer samples than features":
        x = rng.normal(size=(12, 40))
        y = np.repeat(np.arange(3), 4)
    else:
        x, y = gaussian_classes(rng, 100, MEANS, COV)
        extra = x[:, :1] if case == "duplicated channel" else np.zeros((len(x), 1))
        x = np.hstack([x, extra])
    gaussian = TapGaussian.fit(x, y, 3)
    scores = gaussian.score(np.vstack([x, rng.normal(size=(5, x.shape[1])) * 100]))
    assert np.all(np.isfinite(scores))
    assert np.all(scores <= 0)


def test_a_class_without_samples_is_an_error(rng: np.random.Generator) -> None:
    x, y = gaussian_classes(rng, 10, MEANS[:2], COV)
    with pytest.raises(ValueError, match=r"classes \[2\] have no training samples"):
        TapGaussian.fit(x, y, 3)


def test_prepared_scales_rows_to_unit_norm_and_keeps_zero_rows() -> None:
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-200, 0.0]])
    np.testing.assert_array_equal(prepared(rows, normalise=False), rows)
    np.testing.assert_allclose(
        prepared(rows, normalise=True), [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]
    )
    single = np.array([[3.0, 4.0]], dtype=np.float32)
    assert prepared(single, normalise=True).dtype == np.float64
    assert prepared(single, normalise=False).dtype == np.float64
