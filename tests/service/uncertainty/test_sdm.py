"""SDM: activation, similarity, distance, DKW, the HR-region search, admission and artifacts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from surety_serving.uncertainty import SDM, ArtifactError, FeatureSet
from surety_serving.uncertainty.sdm import (
    dkw_epsilon,
    ecdf_below,
    high_reliability_region,
    nearest_neighbours,
    rescaled_q,
    similarity_q,
)

from .conftest import gaussian_classes, numpy_scaled_softmax

pytestmark = pytest.mark.unit


def test_activation_limits() -> None:
    z = np.array([[1.0, -2.0, 0.5], [10.0, 9.0, -3.0]])
    base = numpy_scaled_softmax(z, np.ones(2))
    # q = e − 2 and d = 1 give ln(2+q)·d = 1: the plain softmax.
    np.testing.assert_allclose(numpy_scaled_softmax(z, np.log(2 + (math.e - 2)) * np.ones(2)), base)
    np.testing.assert_allclose(numpy_scaled_softmax(z, np.zeros(2)), np.full((2, 3), 1 / 3))


def test_neighbour_run_length_on_hand_built_lists() -> None:
    support_labels = np.array([0, 0, 1, 0, 1])
    support_predictions = np.array([0, 0, 0, 0, 1])  # point 2 is mispredicted
    neighbours = np.array(
        [
            [0, 1, 2, 3],  # ✓ ✓ ✗(wrong prediction) ✓ → 2
            [4, 0, 1, 3],  # first neighbour is of another class → 0
            [0, 1, 3, 0],  # all match → k
            [4, 2, 0, 1],  # predicted 1: ✓, then point 2 (label 1, prediction 0) breaks → 1
        ]
    )
    q = similarity_q(neighbours, support_labels, support_predictions, np.array([0, 0, 0, 1]))
    np.testing.assert_array_equal(q, [2, 0, 4, 1])


def test_nearest_neighbours_exact_stable_and_excluding_self(rng: np.random.Generator) -> None:
    support = rng.normal(size=(50, 4))
    support[10] = support[3]  # an exact tie: the lower index must come first
    queries = np.vstack([support[3], rng.normal(size=(5, 4))])
    indices, distances = nearest_neighbours(support, queries, k=7)
    brute = np.linalg.norm(queries[:, None, :] - support[None, :, :], axis=2)
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :7], atol=1e-6)
    np.testing.assert_array_equal(indices[0, :2], [3, 10])
    # A training point skips itself, so its duplicate is its nearest neighbour.
    indices, distances = nearest_neighbours(
        support, support[[3, 20]], k=60, exclude=np.array([3, 20])
    )
    assert indices.shape == (2, 49)
    assert indices[0, 0] == 10 and distances[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert 20 not in indices[1]


def test_dkw_epsilon() -> None:
    assert dkw_epsilon(1000, 0.95) == pytest.approx(0.04295, abs=5e-6)
    assert dkw_epsilon(0, 0.95) == 1.0
    np.testing.assert_array_equal(dkw_epsilon(np.array([0, 1]), 0.95) <= 1.0, [True, True])


def test_rescaled_q() -> None:
    np.testing.assert_allclose(
        rescaled_q(np.array([0, 3, 100]), np.array([0.9, 1.0, 0.5])), [0, 3, math.sqrt(102)]
    )


def _hr_data(accurate_from: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibration points at q′ = 0.5, 1, …, 10; the true-class probability is high from
    `accurate_from` on (None: never), 0.4 below it; two classes, alternating."""
    q_prime = np.repeat(np.arange(0.5, 10.5, 0.5), 20)
    labels = np.tile([0, 1], len(q_prime) // 2)
    if accurate_from is None:
        probability = np.full(len(q_prime), 0.4)
    else:
        probability = np.where(q_prime >= accurate_from, 0.99, 0.4)
    return q_prime, probability, labels


def test_region_search_returns_the_smallest_qualifying_threshold() -> None:
    q_prime, probability, labels = _hr_data(accurate_from=6.0)
    threshold, psi = high_reliability_region(q_prime, probability, labels, 2, alpha=0.9)
    assert threshold == 6.0
    np.testing.assert_allclose(psi, [0.99, 0.99])


def test_region_search_tolerates_a_few_errors_above_the_threshold() -> None:
    q_prime, probability, labels = _hr_data(accurate_from=3.0)
    # One wrong point among the 140 class-0 points at q′ ≥ 3 keeps the 5% quantile at 0.99.
    probability[np.flatnonzero((q_prime >= 3.0) & (labels == 0))[0]] = 0.1
    threshold, _ = high_reliability_region(q_prime, probability, labels, 2, alpha=0.95)
    assert threshold == 3.0


def test_region_search_finds_none_when_accuracy_stays_below_alpha() -> None:
    q_prime, probability, labels = _hr_data(accurate_from=None)
    threshold, psi = high_reliability_region(q_prime, probability, labels, 2, alpha=0.9)
    assert threshold == math.inf
    assert np.all(np.isinf(psi))


def test_region_search_ignores_points_with_q_prime_below_one() -> None:
    q_prime, probability, labels = _hr_data(accurate_from=0.5)
    threshold, _ = high_reliability_region(q_prime, probability, labels, 2, alpha=0.9)
    assert threshold == 1.0


MEANS = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
COV = np.eye(2) * 0.8


def lda_logits(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The Bayes-optimal linear head for these Gaussians: 2·(xᵀμ_c − ½‖μ_c‖²)/σ²."""
    logits = (x @ MEANS.T - 0.5 * np.sum(MEANS**2, axis=1)) * 2.0 / 0.8
    return logits if bias is None else logits + bias


def _fitted(rng: np.random.Generator, k: int = 100) -> SDM:
    x, y = gaussian_classes(rng, 300, MEANS, COV)
    train = FeatureSet(taps={"h": x}, logits=lda_logits(x), labels=y)
    x, y = gaussian_classes(rng, 300, MEANS, COV)
    calibration = FeatureSet(taps={"h": x}, logits=lda_logits(x), labels=y)
    return SDM.fit(train, calibration, "h", numpy_scaled_softmax, alpha=0.9, k=k)


def test_admitted_points_are_accurate_on_exchangeable_data(rng: np.random.Generator) -> None:
    sdm = _fitted(rng)
    assert math.isfinite(sdm.q_prime_min)
    x, y = gaussian_classes(rng, 1000, MEANS, COV)
    logits = lda_logits(x)
    out = sdm.evaluate({"h": x}, logits)
    admitted = out["sdm_reliable"]
    predictions = logits.argmax(axis=1)
    assert 0.2 < admitted.mean() < 1.0
    n = admitted.sum()
    tolerance = 1.96 * math.sqrt(0.9 * 0.1 / n)
    assert (predictions[admitted] == y[admitted]).mean() >= 0.9 - tolerance
    for c in range(3):
        chosen = admitted & (predictions == c)
        assert chosen.sum() > 0
        assert (y[chosen] == c).mean() >= 0.9 - 1.96 * math.sqrt(0.09 / chosen.sum())
    # Shapes and dtypes of the served outputs.
    assert out["sdm_probabilities"].shape == (3000, 3)
    assert {out[k].dtype for k in ("sdm_q", "sdm_d", "sdm_p_lower")} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(
        out["sdm_probabilities"].argmax(axis=1)[out["sdm_d"] > 0], predictions[out["sdm_d"] > 0]
    )


def test_far_away_queries_are_rejected(rng: np.random.Generator) -> None:
    sdm = _fitted(rng)
    far = rng.normal(size=(50, 2)) + np.array([40.0, -40.0])
    out = sdm.evaluate({"h": far}, lda_logits(far))
    assert not out["sdm_reliable"].any()
    np.testing.assert_array_equal(out["sdm_d"], 0.0)
    np.testing.assert_allclose(out["sdm_probabilities"], 1 / 3, rtol=1e-6)


def test_no_overflow_at_large_q_and_logits() -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 5e3, 1e4]])
    probabilities = numpy_scaled_softmax(z, np.log(2.0 + 2048.0) * np.ones(2))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_array_equal(probabilities.argmax(axis=1), [0, 2])


def test_fit_refuses_a_class_without_any_q_positive_calibration_point(
    rng: np.random.Generator,
) -> None:
    x, y = gaussian_classes(rng, 50, MEANS, COV)
    train = FeatureSet(taps={"h": x}, logits=lda_logits(x), labels=y)
    # A head that never predicts class 2: no calibration point of class 2 can have q > 0.
    never_two = lda_logits(x, bias=np.array([0.0, 0.0, -1e3]))
    calibration = FeatureSet(taps={"h": x}, logits=never_two, labels=y)
    with pytest.raises(ValueError, match=r"classes \[2\] have no calibration point with q > 0"):
        SDM.fit(train, calibration, "h", numpy_scaled_softmax)


def test_artifact_round_trip(rng: np.random.Generator, tmp_path: Path) -> None:
    sdm = _fitted(rng)
    sdm.save(tmp_path)
    loaded = SDM.load(tmp_path, softmax=numpy_scaled_softmax)
    x, _ = gaussian_classes(rng, 30, MEANS, COV)
    logits = lda_logits(x)
    for key, value in sdm.evaluate({"h": x}, logits).items():
        np.testing.assert_array_equal(loaded.evaluate({"h": x}, logits)[key], value)
    assert loaded.report() == sdm.report()
    with pytest.raises(ArtifactError, match="3 classes in the artifact, 4 in the model"):
        loaded.check_model({"h": 2}, 4)
    np.savez(tmp_path / "sdm.npz", psi=np.zeros(3))
    with pytest.raises(ArtifactError, match=r"sdm\.npz: array 'support_features' missing"):
        SDM.load(tmp_path, softmax=numpy_scaled_softmax)


@pytest.mark.parametrize("k", [1, 5, 40, 1000])
def test_served_similarity_equals_the_sorted_neighbour_run(
    rng: np.random.Generator, k: int
) -> None:
    # Coarse integer features make many exact distance ties; duplicated rows make more.
    support = rng.integers(0, 3, size=(60, 2)).astype(np.float64)
    labels = rng.integers(0, 2, size=60)
    predictions = np.where(rng.random(60) < 0.8, labels, 1 - labels)
    queries = np.vstack([rng.integers(0, 3, size=(40, 2)).astype(np.float64), support[:5]])
    query_predictions = rng.integers(0, 2, size=len(queries))
    sdm = SDM(
        tap="h", alpha=0.9, k=k,
        support_features=support.astype(np.float32),
        support_labels=labels, support_predictions=predictions,
        distance_tables=[], q_prime_tables=[], q_prime_min=math.inf,
        psi=np.full(2, math.inf), softmax=numpy_scaled_softmax,
    )  # fmt: skip
    q, nearest = sdm.similarity(queries, query_predictions)
    indices, distances = nearest_neighbours(support, queries, k)
    np.testing.assert_array_equal(q, similarity_q(indices, labels, predictions, query_predictions))
    np.testing.assert_allclose(nearest, distances[:, 0], atol=1e-9)


def test_vectorised_ecdf_counts_equal_per_class_binary_searches(rng: np.random.Generator) -> None:
    tables = [np.sort(rng.integers(0, 6, size=n).astype(float)) for n in (0, 1, 5, 12)]
    sdm = SDM(
        tap="h", alpha=0.9, k=10,
        support_features=np.zeros((1, 1), np.float32),
        support_labels=np.zeros(1, np.int64), support_predictions=np.zeros(1, np.int64),
        distance_tables=tables, q_prime_tables=tables, q_prime_min=math.inf,
        psi=np.full(4, math.inf), softmax=numpy_scaled_softmax,
    )  # fmt: skip
    x = np.array([-1.0, 0.0, 2.0, 2.5, 5.0, 9.0])  # ties with stored values included
    expected = np.stack([1.0 - ecdf_below(t, x) for t in tables]).min(axis=0)
    np.testing.assert_array_equal(sdm.distance(x), expected)


def _labelled(rng: np.random.Generator, n_per_class: int) -> FeatureSet:
    x, y = gaussian_classes(rng, n_per_class, MEANS, COV)
    return FeatureSet(taps={"h": x}, logits=lda_logits(x), labels=y)


def test_cross_fitted_calibration_uses_every_point_and_serves_all_of_them(
    rng: np.random.Generator,
) -> None:
    labelled = _labelled(rng, 200)
    sdm = SDM.fit_cross_fitted(labelled, "h", numpy_scaled_softmax, alpha=0.9, k=100, folds=5)
    # Every labelled point is a calibration point (its q′ is in its class's table) and the
    # served support is all of them.
    assert sum(len(t) for t in sdm.q_prime_tables) == len(labelled.labels)
    assert len(sdm.support_labels) == len(labelled.labels)
    assert math.isfinite(sdm.q_prime_min)
    x, y = gaussian_classes(rng, 1000, MEANS, COV)
    logits = lda_logits(x)
    admitted = sdm.evaluate({"h": x}, logits)["sdm_reliable"]
    assert 0.2 < admitted.mean() < 1.0
    tolerance = 1.96 * math.sqrt(0.9 * 0.1 / admitted.sum())
    assert (logits.argmax(axis=1)[admitted] == y[admitted]).mean() >= 0.9 - tolerance


def test_cross_fitted_points_never_count_themselves(rng: np.random.Generator) -> None:
    # Exact duplicates across the set: a point's nearest distance can be 0 only through its
    # duplicate (in another fold), never through itself.
    labelled = _labelled(rng, 60)
    sdm = SDM.fit_cross_fitted(labelled, "h", numpy_scaled_softmax, alpha=0.9, k=50, folds=3)
    assert min(float(t[0]) for t in sdm.distance_tables) > 0.0
    doubled = FeatureSet(
        taps={"h": np.vstack([labelled.taps["h"]] * 2)},
        logits=np.vstack([labelled.logits] * 2),
        labels=np.concatenate([labelled.labels] * 2),
    )
    with_twins = SDM.fit_cross_fitted(doubled, "h", numpy_scaled_softmax, alpha=0.9, k=50, folds=3)
    assert min(float(t[0]) for t in with_twins.distance_tables) == 0.0


def test_cross_fitting_is_seeded(rng: np.random.Generator) -> None:
    labelled = _labelled(rng, 80)
    fits = [
        SDM.fit_cross_fitted(labelled, "h", numpy_scaled_softmax, alpha=0.9, k=50, seed=seed)
        for seed in (0, 0, 1)
    ]
    for a, b in zip(fits[0].q_prime_tables, fits[1].q_prime_tables, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(fits[0].q_prime_tables, fits[2].q_prime_tables, strict=True)
    )
    with pytest.raises(ValueError, match="folds"):
        SDM.fit_cross_fitted(labelled, "h", numpy_scaled_softmax, folds=1)
