"""Fitting LAGER's weights and the signed extensions on small synthetic logit lenses
(docs/judge.md, the fitting module): one layer carries the label, the others are noise."""

from __future__ import annotations

import numpy as np
import pytest

from surety_serving.judge.correlation import spearman
from surety_serving.judge.fitting import PROBE_L2_GRID, FitResult, fit_lager, fit_probe, fit_signed
from surety_serving.judge.lager import (
    DEFAULT_SCORE_VALUES,
    append_constant_layer,
    center_logits,
    expected_score,
)

pytestmark = pytest.mark.unit

V = np.asarray(DEFAULT_SCORE_VALUES)
L, K, SIGNAL = 6, 5, 2
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train logits, labels; validation


def _lens(n: int, seed: int, reversed_: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits [n, L, K] of noise, except layer SIGNAL, which encodes the label: a peak at the
    label's score, or, when ``reversed_``, a tilt away from the label (z_k ∝ −(y − 3)(v_k − 3)),
    which a negative weight turns into a tilt towards it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(1, 6, n).astype(float)
    z = rng.normal(0.0, 1.0, (n, L, K))
    if reversed_:
        z[:, SIGNAL] = -2.0 * (y[:, None] - 3) * (V - 3)
    else:
        z[:, SIGNAL] = 3.0 * (y[:, None] == V)
    z[:, SIGNAL] += rng.normal(0.0, 0.3, (n, K))
    return z, y


def _served(fit: FitResult, z: np.ndarray) -> np.ndarray:
    """The expected scores the exported graph computes with these weights."""
    if fit.centered:
        z = center_logits(z)
    if fit.constant_layer:
        z = append_constant_layer(z)
    return expected_score(z, fit.weights, V)[0]


def _fit_score(fit: FitResult, z: np.ndarray, y: np.ndarray) -> float:
    return spearman(_served(fit, z), y)


@pytest.fixture(scope="module")
def reversed_data() -> Data:
    return (*_lens(200, 0, reversed_=True), *_lens(100, 1, reversed_=True))


def test_lager_concentrates_on_the_informative_layer() -> None:
    z_train, y_train = _lens(200, 0)
    z_val, y_val = _lens(100, 1)
    fit = fit_lager(z_train, y_train, z_val, y_val, V)
    assert fit.weights.shape == (L,)
    assert fit.weights.sum() == pytest.approx(1.0) and np.all(fit.weights > 0)
    assert fit.weights[SIGNAL] > 0.5
    assert fit.train_loss[-1] < fit.train_loss[0] and fit.val_mse[-1] < fit.val_mse[0]
    assert fit.val_mse[fit.best_epoch] == min(fit.val_mse)
    assert 0 < fit.mixing < 1
    assert _fit_score(fit, z_val, y_val) > 0.9
    again = fit_lager(z_train, y_train, z_val, y_val, V)
    np.testing.assert_array_equal(again.weights, fit.weights)  # seeded


def test_lager_cannot_use_a_reversed_layer(reversed_data: Data) -> None:
    fit = fit_lager(*reversed_data, values=V)
    assert fit.weights.sum() == pytest.approx(1.0)
    assert fit.weights[SIGNAL] < 1 / L  # it can only turn the layer down
    assert _fit_score(fit, *reversed_data[2:]) < 0.3


def test_signed_layer_weights_recover_a_reversed_layer(reversed_data: Data) -> None:
    fit = fit_signed(*reversed_data, values=V, kind="layer", l2_grid=(0.0, 1e-2))
    assert fit.weights.shape == (L,) and not fit.constant_layer
    assert fit.weights[SIGNAL] < 0
    assert np.argmax(np.abs(fit.weights)) == SIGNAL
    assert fit.train_loss[-1] < fit.train_loss[0]
    assert _fit_score(fit, *reversed_data[2:]) > 0.9


def test_signed_layer_score_weights_recover_a_reversed_layer(reversed_data: Data) -> None:
    fit = fit_signed(*reversed_data, values=V, kind="layer_score", l2_grid=(0.0,))
    assert fit.weights.shape == (L, K)
    # The middle score's logit carries no signal ((v_k − 3) = 0); the others flip sign.
    assert np.all(fit.weights[SIGNAL, [0, 1, 3, 4]] < 0)
    assert _fit_score(fit, *reversed_data[2:]) > 0.9


def test_the_l2_strength_is_chosen_on_validation(reversed_data: Data) -> None:
    grid = (0.0, 1e-2, 10.0)
    fit = fit_signed(*reversed_data, values=V, kind="layer", l2_grid=grid)
    assert [lam for lam, _ in fit.l2_sweep] == list(grid)
    best_lam, best_mse = min(fit.l2_sweep, key=lambda item: item[1])
    assert fit.l2 == best_lam and fit.val_mse[fit.best_epoch] == best_mse
    assert dict(fit.l2_sweep)[10.0] > best_mse
    # A strong penalty holds the weights at uniform LAGER, its target.
    strong = fit_signed(*reversed_data, values=V, kind="layer", l2_grid=(1e4,))
    np.testing.assert_allclose(strong.weights, 1 / L, atol=0.05)


def test_a_bias_row_fits_skewed_labels_that_the_layers_do_not_explain() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 1.0, (300, L, K))
    y = rng.choice([4.0, 5.0], 300)  # the noise says ~3 on average; the labels are all high
    split: Data = (z[:200], y[:200], z[200:], y[200:])
    plain = fit_signed(*split, values=V, kind="layer_score", l2_grid=(0.0,))
    biased = fit_signed(*split, values=V, kind="layer_score", bias=True, l2_grid=(0.0,))
    assert biased.constant_layer and biased.weights.shape == (L + 1, K)
    bias = biased.weights[-1]
    assert bias[3:].mean() > bias[:2].mean()  # towards the high scores
    assert biased.val_mse[biased.best_epoch] < 0.5 * plain.val_mse[plain.best_epoch]
    # What the graph computes (centred logits, a constant layer of ones) is what was fitted.
    assert biased.centered
    score = _served(biased, z[200:])
    assert np.mean((score - y[200:]) ** 2) == pytest.approx(biased.val_mse[biased.best_epoch])


def test_centring_keeps_a_per_layer_common_level_from_swamping_per_score_weights(
    reversed_data: Data,
) -> None:
    # A raw logit lens: every layer's logits share a large level that varies from item to item.
    z, y, z_val, y_val = reversed_data
    rng = np.random.default_rng(6)
    z = z + rng.normal(0.0, 30.0, z.shape[:2])[:, :, None]
    z_val = z_val + rng.normal(0.0, 30.0, z_val.shape[:2])[:, :, None]
    centred = fit_signed(z, y, z_val, y_val, V, kind="layer_score", l2_grid=(0.0,))
    raw = fit_signed(z, y, z_val, y_val, V, kind="layer_score", l2_grid=(0.0,), center=False)
    assert centred.centered and not raw.centered
    assert _fit_score(centred, z_val, y_val) > 0.9
    assert min(centred.val_mse) < 0.5 * min(raw.val_mse)
    # With layer weights centring changes nothing: the softmax ignores a shared shift.
    layer = fit_signed(z, y, z_val, y_val, V, kind="layer", l2_grid=(0.0,))
    layer_raw = fit_signed(z, y, z_val, y_val, V, kind="layer", l2_grid=(0.0,), center=False)
    np.testing.assert_allclose(layer.weights, layer_raw.weights, atol=1e-6)


def test_bad_arguments_are_rejected(reversed_data: Data) -> None:
    with pytest.raises(ValueError, match="kind='layer_score'"):
        fit_signed(*reversed_data, values=V, kind="layer", bias=True)
    with pytest.raises(ValueError, match="l2_grid"):
        fit_signed(*reversed_data, values=V, l2_grid=(-1.0,))
    z, y, z_val, y_val = reversed_data
    with pytest.raises(ValueError, match="train"):
        fit_lager(z, y[:-1], z_val, y_val, values=V)
    with pytest.raises(ValueError, match="validation"):
        fit_lager(z, y, z_val[:, :, :4], y_val, values=V)
    with pytest.raises(ValueError, match="epochs"):
        fit_lager(z, y, z_val, y_val, values=V, epochs=0)


def test_the_probe_reads_a_signal_spread_over_layers_of_very_different_scales() -> None:
    """The label is a sum over (layer, score) pairs whose logits live on scales from 0.1 to 100,
    on top of a large per-layer common level, as on a raw logit lens: the probe (standardised,
    L-BFGS) ranks validation items almost perfectly; LAGER's softmax weights cannot."""
    rng = np.random.default_rng(3)
    n = 400
    scales = np.logspace(-1, 2, L)[:, None] * np.ones((L, K))
    z = rng.normal(0.0, 1.0, (n, L, K)) * scales
    z += rng.normal(0.0, 200.0, (n, L, 1))  # each layer's common level, item to item
    direction = rng.normal(0.0, 1.0, (L, K)) / scales
    signal = (center_logits(z) * direction).sum(axis=(1, 2))
    y = 3 + 1.5 * np.tanh(signal / signal.std())
    train, val = slice(0, 300), slice(300, None)
    fit = fit_probe(z[train], y[train], z[val], y[val], V)
    assert fit.centered and fit.constant_layer and fit.weights.shape == (L + 1, K)
    assert {lam for lam, _ in fit.l2_sweep} == set(PROBE_L2_GRID)
    served = _served(fit, z[val])
    assert spearman(served, y[val]) > 0.9
    assert ((served >= 1) & (served <= 5)).all()
    lager = fit_lager(z[train], y[train], z[val], y[val], V)
    assert spearman(_served(lager, z[val]), y[val]) < 0.5
