"""Detection and selective-prediction metrics against their definitions and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from surety_serving.uncertainty.evaluation import (
    binomial_tolerance,
    detection_metrics,
    expected_calibration_error,
    selective_metrics,
)

pytestmark = pytest.mark.unit


def test_perfect_separation_scores_one() -> None:
    m = detection_metrics(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0]))
    assert (m.auroc, m.tnr_at_tpr95, m.detection_accuracy) == (1.0, 1.0, 1.0)


def test_identical_distributions_give_half(rng: np.random.Generator) -> None:
    m = detection_metrics(rng.normal(size=20_000), rng.normal(size=20_000))
    assert m.auroc == pytest.approx(0.5, abs=0.01)
    assert m.tnr_at_tpr95 == pytest.approx(0.05, abs=0.01)


def test_auroc_matches_sklearn_with_ties(rng: np.random.Generator) -> None:
    in_scores = np.round(rng.normal(1.0, 1.0, size=500), 1)
    out_scores = np.round(rng.normal(0.0, 1.0, size=300), 1)
    expected = roc_auc_score(np.r_[np.ones(500), np.zeros(300)], np.r_[in_scores, out_scores])
    assert detection_metrics(in_scores, out_scores).auroc == pytest.approx(expected, abs=1e-9)


def test_reversed_scores_give_zero_auroc() -> None:
    assert detection_metrics(np.array([1.0, 2.0]), np.array([3.0, 4.0])).auroc == 0.0


def test_selective_metrics() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    admitted = np.array([True, True, True, False, True, False])
    m = selective_metrics(admitted, predictions, labels)
    assert m.admitted == 4
    assert m.admitted_fraction == pytest.approx(4 / 6)
    assert m.marginal_accuracy == pytest.approx(3 / 4)
    assert m.min_class_conditional_accuracy == pytest.approx(0.5)  # class 0: one of two right
    assert m.min_prediction_conditional_accuracy == pytest.approx(0.5)  # predicted 1: one of two
    none = selective_metrics(np.zeros(6, dtype=bool), predictions, labels)
    assert none.admitted == 0 and math.isnan(none.marginal_accuracy)


def test_binomial_tolerance() -> None:
    assert binomial_tolerance(0.95, 100) == pytest.approx(1.96 * math.sqrt(0.0475 / 100))
    assert binomial_tolerance(0.95, 0) == math.inf


def test_expected_calibration_error(rng: np.random.Generator) -> None:
    # Confidence 0.8 everywhere: calibrated when 80% are right, off by 0.3 when half are.
    probabilities = np.tile([0.8, 0.2], (10_000, 1))
    right = rng.random(10_000) < 0.8
    labels = np.where(right, 0, 1)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=0.02)
    half = np.where(np.arange(10_000) % 2 == 0, 0, 1)
    assert expected_calibration_error(probabilities, half) == pytest.approx(0.3, abs=1e-9)


def test_fpr_at_tpr95_is_taken_at_the_first_threshold_reaching_95_percent() -> None:
    in_scores = np.arange(1.0, 21.0)  # 20 points: accepting 19 of them is the first TPR ≥ 0.95
    out_scores = np.array([1.5, 2.5, 30.0])  # the threshold 2 accepts 2.5 and 30
    m = detection_metrics(in_scores, out_scores)
    assert m.fpr_at_tpr95 == pytest.approx(2 / 3)
    # The TNR definition takes the TPR closest to 0.95 instead, here the same point.
    assert m.tnr_at_tpr95 == pytest.approx(1 / 3)


def test_fpr_at_tpr95_can_differ_from_one_minus_tnr_at_tpr95() -> None:
    # 10 in-distribution points: TPR 0.9 (at 11) is closer to 0.95 than TPR 1.0 (at 10, which
    # also accepts 10.5), but only TPR 1.0 reaches 0.95.
    m = detection_metrics(np.arange(10.0, 20.0), np.array([10.5, 100.0]))
    assert m.tnr_at_tpr95 == pytest.approx(0.5)
    assert m.fpr_at_tpr95 == pytest.approx(1.0)
