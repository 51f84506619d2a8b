"""OOD detectors: each against a known answer, invariances, and the params/arrays round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surety_serving.uncertainty import detectors
from surety_serving.uncertainty.base import ArtifactError, FeatureSet
from surety_serving.uncertainty.detectors import DETECTORS, Detector, fit_detector
from surety_serving.uncertainty.ood import candidates

from .conftest import gaussian_classes

pytestmark = pytest.mark.unit

MEANS = np.array([[-6.0, 0.0, 0.0, 0.0], [6.0, 0.0, 0.0, 0.0]])
_MIX = np.random.default_rng(7)
TAP_B = _MIX.normal(size=(4, 6))
TAP_C = _MIX.normal(size=(4, 5)) + np.eye(4, 5)
TAPS = ("a", "b", "c")
TOKEN = "token"
SOURCE = Path("artifacts/ood.npz")


def outputs(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> FeatureSet:
    """What a model with three taps, a token score and a Gaussian classifier would output for x:
    logits −½‖x − μ_c‖², token score = the smallest of ½‖x − μ_c‖² (higher = less typical)."""
    half_squared = 0.5 * ((x[:, None, :] - MEANS[None, :, :]) ** 2).sum(axis=2)
    taps = {
        "a": x,
        "b": x @ TAP_B + 3.0 + 0.1 * rng.normal(size=(len(x), TAP_B.shape[1])),
        "c": x @ TAP_C + 0.1 * rng.normal(size=(len(x), TAP_C.shape[1])),
        TOKEN: half_squared.min(axis=1, keepdims=True),
    }
    return FeatureSet(taps=taps, logits=-half_squared, labels=y)


def in_distribution(rng: np.random.Generator, n_per_class: int) -> FeatureSet:
    return outputs(*gaussian_classes(rng, n_per_class, MEANS, np.eye(4)), rng)


def far_away(rng: np.random.Generator, n: int) -> FeatureSet:
    """Points 60 standard deviations off both classes, perpendicular to their separation."""
    x = rng.normal(size=(n, 4)) + np.array([0.0, 60.0, 0.0, 0.0])
    return outputs(x, np.full(n, -1), rng)


def every_candidate() -> list[tuple[str, dict[str, Any]]]:
    """(method, params) of every candidate: every registered detector, some in several
    settings."""
    return [(c.method, c.params) for c in candidates(TAPS, TOKEN)]


#: The detectors of the request's text: not candidates while calibration passes no texts
#: (test_text_detectors.py tests them).
TEXT_METHODS = {"genre", "char_density"}


def test_the_candidates_cover_every_registered_method() -> None:
    assert {method for method, _ in every_candidate()} == set(DETECTORS) - TEXT_METHODS


@pytest.mark.parametrize(("method", "params"), every_candidate())
def test_an_obvious_outlier_scores_below_every_in_class_point(
    rng: np.random.Generator, method: str, params: dict[str, Any]
) -> None:
    train, calibration = in_distribution(rng, 300), in_distribution(rng, 100)
    detector = fit_detector(train, calibration, method, params)
    test, outlier = in_distribution(rng, 100), far_away(rng, 1)
    in_scores = detector.score(test.taps, test.logits)
    out_score = detector.score(outlier.taps, outlier.logits)
    assert in_scores.shape == (200,) and in_scores.dtype == np.float64
    assert out_score[0] < in_scores.min()


def test_msp_and_energy_match_hand_computed_values() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    e = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    empty = FeatureSet(taps={}, logits=logits, labels=np.zeros(3, dtype=np.int64))
    with np.errstate(over="raise", invalid="raise"):  # exp(−2000) may underflow, not overflow
        msp = fit_detector(empty, empty, "msp", {}).score({}, logits)
        energy = fit_detector(empty, empty, "energy", {}).score({}, logits)
    np.testing.assert_allclose(msp, [e[2] / sum(e), 1 / 3, 1.0], rtol=1e-12)
    np.testing.assert_allclose(energy, [math.log(sum(e)), math.log(3.0), 1000.0], rtol=1e-12)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pinv_distances(train: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """MD_c [B, C] from the class means, the pooled covariance and np.linalg.pinv."""
    means = np.stack([train[labels == c].mean(axis=0) for c in np.unique(labels)])
    centred = train - means[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(train))
    diff = queries[:, None, :] - means[None, :, :]
    return np.einsum("bcf,fg,bcg->bc", diff, precision, diff)


@pytest.mark.parametrize("normalise", [False, True])
def test_mahalanobis_equals_the_direct_pseudo_inverse_computation(
    rng: np.random.Generator, normalise: bool
) -> None:
    means = np.array([[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    x, y = gaussian_classes(rng, 200, means, cov)
    train = FeatureSet(taps={"t": x}, logits=np.zeros((len(y), 3)), labels=y)
    detector = fit_detector(train, train, "mahalanobis", {"tap": "t", "normalise": normalise})
    queries = rng.normal(size=(40, 3)) * 4
    prepare = unit if normalise else (lambda f: f)
    expected = -pinv_distances(prepare(x), y, prepare(queries)).min(axis=1)
    np.testing.assert_allclose(
        detector.score({"t": queries}, np.zeros((40, 3))), expected, rtol=1e-8
    )


def test_relative_mahalanobis_discounts_the_high_variance_background_direction(
    rng: np.random.Generator,
) -> None:
    # Classes at (±5, 0) with identity covariance: all training data varies widely along the first
    # axis (the background direction) and little along the second.
    x, y = gaussian_classes(rng, 5000, np.array([[-5.0, 0.0], [5.0, 0.0]]), np.eye(2))
    train = FeatureSet(taps={"t": x}, logits=np.zeros((len(y), 2)), labels=y)
    params = {"tap": "t", "normalise": False}
    relative = fit_detector(train, train, "relative_mahalanobis", params)
    plain = fit_detector(train, train, "mahalanobis", params)
    # Both 3 class standard deviations from class 1: along the background direction, across it.
    along, across = np.array([[8.0, 0.0]]), np.array([[5.0, 3.0]])
    no_logits = np.zeros((1, 2))

    def scores(detector: Detector) -> tuple[float, float]:
        score = detector.score
        return float(score({"t": along}, no_logits)[0]), float(score({"t": across}, no_logits)[0])

    plain_along, plain_across = scores(plain)
    assert plain_along == pytest.approx(plain_across, abs=0.5)  # ≈ −9 both
    relative_along, relative_across = scores(relative)
    # RMD ≈ 9 − 8²/26 ≈ 6.5 along, ≈ 9 − (25/26 + 9) ≈ −1 across.
    assert relative_along < relative_across - 5.0
    queries = np.vstack([along, across, rng.normal(size=(20, 2)) * 6])
    background = pinv_distances(x, np.zeros(len(x), dtype=np.int64), queries)[:, 0]
    expected = -(pinv_distances(x, y, queries) - background[:, None]).min(axis=1)
    got = relative.score({"t": queries}, np.zeros((len(queries), 2)))
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_brute_force_sorted_distances(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    train = in_distribution(rng, 60)
    queries = rng.normal(size=(37, 5)) * 3
    # A tiny block size makes the search run over many row blocks.
    monkeypatch.setattr(detectors, "KNN_BLOCK_ELEMENTS", 7 * len(train.labels))
    detector = fit_detector(train, train, "knn", {"tap": "c", "k": k})
    distances = np.linalg.norm(
        unit(queries)[:, None, :] - unit(train.taps["c"])[None, :, :], axis=2
    )
    expected = -np.sort(distances, axis=1)[:, k - 1]
    np.testing.assert_allclose(
        detector.score({"c": queries}, np.zeros((37, 2))), expected, atol=1e-7
    )


def test_knn_rejects_k_beyond_the_training_set(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\], got 7"):
        fit_detector(train, train, "knn", {"tap": "c", "k": 7})


NORMALISED: list[tuple[str, dict[str, Any]]] = [
    ("mahalanobis", {"tap": "b", "normalise": True}),
    ("relative_mahalanobis", {"tap": "c", "normalise": True}),
    ("knn", {"tap": "c", "k": 1}),
    ("knn", {"tap": "c", "k": 10}),
    ("tap_ensemble", {"taps": list(TAPS), "normalise": True}),
]


@pytest.mark.parametrize(("method", "params"), NORMALISED)
def test_normalised_scores_ignore_the_scale_of_a_row(
    rng: np.random.Generator, method: str, params: dict[str, Any]
) -> None:
    train, calibration, test = (in_distribution(rng, n) for n in (200, 100, 20))
    detector = fit_detector(train, calibration, method, params)
    scaled = {name: features * 10.0 for name, features in test.taps.items()}
    np.testing.assert_allclose(
        detector.score(scaled, test.logits), detector.score(test.taps, test.logits), rtol=1e-9
    )


def test_unnormalised_mahalanobis_does_see_the_scale(rng: np.random.Generator) -> None:
    train, test = in_distribution(rng, 200), in_distribution(rng, 20)
    detector = fit_detector(train, train, "mahalanobis", {"tap": "b", "normalise": False})
    scaled = {"b": test.taps["b"] * 10.0}
    assert not np.allclose(
        detector.score(scaled, test.logits), detector.score(test.taps, test.logits)
    )


def test_a_zero_feature_row_scores_finite_when_normalised(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 100)
    for method, params in NORMALISED:
        detector = fit_detector(train, train, method, params)
        zero = {name: np.zeros((1, f.shape[1])) for name, f in train.taps.items()}
        assert np.isfinite(detector.score(zero, np.zeros((1, 2)))).all(), method


@pytest.mark.parametrize("shape", [(5,), (5, 1)])
def test_token_density_is_minus_the_value(shape: tuple[int, ...]) -> None:
    values = np.array([0.5, -1.0, 3.0, 0.0, 12.5])
    detector = DETECTORS["token_density"].restore({"output": TOKEN}, {}, SOURCE)
    np.testing.assert_array_equal(
        detector.score({TOKEN: values.reshape(shape)}, np.zeros((5, 2))), -values
    )
    assert detector.inputs() == {TOKEN: 1}


def test_token_density_rejects_a_wider_output() -> None:
    detector = DETECTORS["token_density"].restore({"output": TOKEN}, {}, SOURCE)
    with pytest.raises(ValueError, match=r"must be \[B\] or \[B, 1\]"):
        detector.score({TOKEN: np.zeros((5, 2))}, np.zeros((5, 2)))


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("mahalanobis", {"tap": "a"}, r"missing parameters \['normalise'\]"),
        ("mahalanobis", {"tap": "a", "normalise": 1}, r"'normalise' must be bool"),
        ("knn", {"tap": "c", "k": True}, r"'k' must be int"),
        ("msp", {"temperature": 2.0}, r"unknown parameters \['temperature'\]"),
        ("tap_ensemble", {"taps": [], "normalise": True}, r"non-empty list of str"),
        ("mahalanobis", {"tap": "z", "normalise": True}, r"tap 'z' is not in the feature set"),
        ("nope", {}, r"unknown OOD method 'nope'"),
    ],
)
def test_bad_params_are_refused_when_fitting(
    rng: np.random.Generator, method: str, params: dict[str, Any], message: str
) -> None:
    train = in_distribution(rng, 20)
    with pytest.raises(ValueError, match=message):
        fit_detector(train, train, method, params)


@pytest.mark.parametrize(("method", "params"), every_candidate())
def test_params_and_arrays_restore_identical_scores(
    rng: np.random.Generator, method: str, params: dict[str, Any]
) -> None:
    train, calibration, test = (in_distribution(rng, n) for n in (100, 50, 30))
    detector = fit_detector(train, calibration, method, params)
    stored = json.loads(json.dumps(detector.params()))  # the params must survive JSON
    restored = DETECTORS[method].restore(stored, detector.arrays(), SOURCE)
    batch = {**test.taps, TOKEN: test.taps[TOKEN][:, 0]}  # a [B] token score, as served
    np.testing.assert_array_equal(
        restored.score(batch, test.logits), detector.score(test.taps, test.logits)
    )
    assert restored.params() == stored
    assert restored.inputs() == detector.inputs()


def test_inputs_name_what_each_detector_reads(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 20)
    widths = {name: f.shape[1] for name, f in train.taps.items()}
    expected = {
        "msp": {},
        "energy": {},
        "mahalanobis": {"c": 5},
        "relative_mahalanobis": {"c": 5},
        "knn": {"c": 5},
        "tap_ensemble": {"a": 4, "b": 6, "c": 5},
        "token_density": {TOKEN: 1},
    }
    seen: dict[str, dict[str, int]] = {}
    for method, params in every_candidate():
        inputs = fit_detector(train, train, method, params).inputs()
        assert all(widths[name] == width for name, width in inputs.items())
        seen.setdefault(method, inputs)
    assert seen == expected


def test_restoring_a_misshapen_array_names_the_file(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 20)
    detector = fit_detector(train, train, "relative_mahalanobis", {"tap": "c", "normalise": True})
    arrays = detector.arrays()
    params = detector.params()
    broken = {**arrays, "whitening_background": arrays["whitening_background"][:3]}
    with pytest.raises(ArtifactError, match=r"artifacts/ood\.npz: background Gaussian of 3"):
        DETECTORS["relative_mahalanobis"].restore(params, broken, SOURCE)
    del broken["whitened_means"]
    with pytest.raises(ArtifactError, match=r"artifacts/ood\.npz: array 'whitened_means' missing"):
        DETECTORS["relative_mahalanobis"].restore(params, broken, SOURCE)
    with pytest.raises(
        ArtifactError,
        match=r"artifacts/ood\.json: relative_mahalanobis: missing parameters \['normalise'\]",
    ):
        DETECTORS["relative_mahalanobis"].restore({"tap": "c"}, arrays, SOURCE)
