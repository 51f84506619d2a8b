"""LAGER's scoring mathematics (docs/judge.md, the lager module) for both weight kinds: w [L]
and W [L, K]."""

from __future__ import annotations

import numpy as np
import pytest

from surety_serving.judge.lager import (
    DEFAULT_SCORE_VALUES,
    aggregate_logits,
    append_constant_layer,
    center_logits,
    escore,
    expected_score,
    layer_scores,
    nearest_score_index,
    probability_aggregation,
    rescale,
    softmax,
    uniform_weights,
    vscore,
)
from surety_serving.kernels import reference

pytestmark = pytest.mark.unit

V = np.asarray(DEFAULT_SCORE_VALUES)
B, L, K = 16, 7, 5
KINDS = ["layer", "layer_score"]


def _logits(seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, (B, L, K))


def _as_kind(w: np.ndarray, kind: str) -> np.ndarray:
    """The [L] weights, or the same weights repeated over the K scores."""
    return w if kind == "layer" else np.repeat(w[:, None], K, axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_layers_under_uniform_weights_give_the_escore(kind: str) -> None:
    one = _logits()[:, :1, :]
    z = np.repeat(one, L, axis=1)
    score, probabilities = expected_score(z, _as_kind(uniform_weights(L), kind), V)
    np.testing.assert_allclose(score, escore(one, V), rtol=1e-12)
    np.testing.assert_allclose(probabilities, softmax(one[:, 0]), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_all_weight_on_the_last_entry_is_the_escore_and_its_argmax_the_vscore(kind: str) -> None:
    z = _logits(1)
    w = np.zeros(L)
    w[-1] = 1.0
    score, probabilities = expected_score(z, _as_kind(w, kind), V)
    np.testing.assert_array_equal(score, escore(z, V))
    np.testing.assert_array_equal(V[np.argmax(probabilities, axis=1)], vscore(z, V))
    assert not np.array_equal(score, escore(z, V, layer=0))  # the layer does matter


@pytest.mark.parametrize("kind", KINDS)
def test_scores_lie_in_the_score_range_even_for_huge_logits(kind: str) -> None:
    z = _logits(2, scale=1e4)
    w = np.random.default_rng(3).normal(size=(L, K) if kind == "layer_score" else L)
    score, probabilities = expected_score(z, w, V)
    assert np.all(np.isfinite(score)) and np.all((score >= 1) & (score <= 5))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_a_one_hot_distribution_returns_its_integer(kind: str) -> None:
    z = np.zeros((K, L, K))
    z[np.arange(K), :, np.arange(K)] = 1e3  # exp(-1e3) underflows to exactly 0
    score, probabilities = expected_score(z, _as_kind(uniform_weights(L), kind), V)
    np.testing.assert_array_equal(score, V)
    np.testing.assert_array_equal(probabilities, np.eye(K))


@pytest.mark.parametrize("kind", KINDS)
def test_raising_the_logit_of_a_score_above_the_expectation_never_lowers_it(kind: str) -> None:
    # ∂s*/∂z̄_k = P_k (v_k − s*): non-negative exactly for the scores at or above s*, so always
    # for the top score.
    z = _logits(4)
    rng = np.random.default_rng(5)
    w = rng.uniform(0.01, 1.0, size=(L, K) if kind == "layer_score" else L)
    base, _ = expected_score(z, w, V)
    checked = 0
    for k in range(K):
        for step in (0.01, 0.5, 5.0):
            raised = z.copy()
            raised[:, rng.integers(L), k] += step
            score, _ = expected_score(raised, w, V)
            above = V[k] >= base
            assert np.all(score[above] >= base[above] - 1e-12)
            checked += int(above.sum())
    top = z.copy()
    top[:, :, -1] += 1.0
    assert np.all(expected_score(top, w, V)[0] > base)
    assert checked > B  # the check was not vacuous


def test_logit_and_probability_aggregation_differ() -> None:
    # A confident "1" and a mild "5": averaging logits keeps the "1" dominant, averaging
    # probabilities gives the mild layer's spread half the mass.
    z = np.array([[[4.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]]])
    w = uniform_weights(2)
    logit_level, _ = expected_score(z, w, V)
    probability_level, _ = probability_aggregation(z, w, V)
    assert logit_level[0] < probability_level[0] - 0.25  # 2.046 vs 2.341
    same = np.repeat(z[:, :1], 2, axis=1)  # identical layers: the two coincide
    np.testing.assert_allclose(expected_score(same, w, V)[0], probability_aggregation(same, w)[0])


def test_uniform_weights_sum_to_one() -> None:
    for n in (1, 7, 31):
        w = uniform_weights(n)
        assert w.shape == (n,) and np.isclose(w.sum(), 1.0) and np.all(w == w[0])
    with pytest.raises(ValueError):
        uniform_weights(0)


def test_layer_and_layer_score_weights_agree_when_the_columns_are_equal() -> None:
    z = _logits(6)
    w = np.random.default_rng(7).normal(size=L)
    np.testing.assert_allclose(
        aggregate_logits(z, w), aggregate_logits(z, _as_kind(w, "layer_score")), rtol=1e-12
    )
    per_score = np.random.default_rng(8).normal(size=(L, K))
    np.testing.assert_allclose(
        aggregate_logits(z, per_score), np.einsum("blk,lk->bk", z, per_score), rtol=1e-12
    )


def test_matches_the_op_reference_for_layer_weights() -> None:
    z = _logits(9).astype(np.float32).astype(np.float64)  # the op rounds its inputs to float32
    w = np.random.default_rng(10).dirichlet(np.ones(L)).astype(np.float32).astype(np.float64)
    score, probabilities = expected_score(z, w, V)
    ref_score, ref_probabilities = reference.expected_score(z, w, V)
    np.testing.assert_allclose(score, ref_score, rtol=1e-12)
    np.testing.assert_allclose(probabilities, ref_probabilities, rtol=1e-12, atol=1e-300)


def test_bad_shapes_are_rejected() -> None:
    z = _logits()
    for bad in (np.ones(L + 1), np.ones((L, K + 1)), np.ones((K, L))):
        with pytest.raises(ValueError, match="layer_weights"):
            expected_score(z, bad, V)
    with pytest.raises(ValueError, match="score_values"):
        expected_score(z, uniform_weights(L), V[:-1])
    with pytest.raises(ValueError, match="layer_logits"):
        expected_score(z[0], uniform_weights(L), V)
    with pytest.raises(ValueError, match="non-negative"):
        probability_aggregation(z, -uniform_weights(L), V)


def test_softmax_does_not_overflow() -> None:
    np.testing.assert_array_equal(softmax([[1e300, 1e300, -1e300]]), [[0.5, 0.5, 0.0]])


def test_vscore_ties_go_to_the_lower_score_and_layer_scores_are_per_layer_escores() -> None:
    z = np.zeros((1, 2, K))
    z[0, -1, [1, 3]] = 2.0
    assert vscore(z, V)[0] == 2.0
    z = _logits(11)
    scores = layer_scores(z, V)
    assert scores.shape == (B, L)
    for layer in (0, 3, L - 1):
        np.testing.assert_allclose(scores[:, layer], escore(z, V, layer=layer), rtol=1e-12)


def test_the_constant_layer_row_is_a_per_score_bias() -> None:
    z = _logits(12)
    bias = np.array([0.5, -1.0, 0.0, 2.0, -0.25])
    weights = np.vstack([np.full((L, K), 1.0 / L), bias])
    augmented = append_constant_layer(z)
    assert augmented.shape == (B, L + 1, K) and np.all(augmented[:, -1] == 1.0)
    score, probabilities = expected_score(augmented, weights, V)
    np.testing.assert_allclose(probabilities, softmax(z.mean(axis=1) + bias), rtol=1e-12)
    np.testing.assert_allclose(score, probabilities @ V, rtol=1e-12)


def test_centring_is_invisible_to_layer_weights_but_not_to_layer_score_weights() -> None:
    z = _logits(13) + np.random.default_rng(14).normal(0.0, 50.0, (B, L, 1))
    centred = center_logits(z)
    np.testing.assert_allclose(centred.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(centred - centred[:, :, :1], z - z[:, :, :1], atol=1e-12)
    w = np.random.default_rng(15).normal(size=L)
    np.testing.assert_allclose(expected_score(centred, w, V)[0], expected_score(z, w, V)[0])
    per_score = np.random.default_rng(16).normal(size=(L, K))
    assert not np.allclose(
        expected_score(centred, per_score, V)[0], expected_score(z, per_score)[0]
    )


def test_rescale_and_nearest_score_index() -> None:
    np.testing.assert_allclose(rescale([0.0, 2.5, 5.0, 3.8]), [1.0, 3.0, 5.0, 4.04])
    np.testing.assert_allclose(rescale([1.0, 5.0], (1, 5), (1, 9)), [1.0, 9.0])
    assert nearest_score_index([1.0, 1.49, 1.5, 2.51, 4.6, 5.0]).tolist() == [0, 0, 0, 2, 4, 4]
