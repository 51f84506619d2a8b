"""OOD-detection and selective-prediction metrics, with in-distribution as the positive class.

Definitions follow Lee et al. (2018): TNR at the threshold whose TPR is *closest* to 95%;
AUROC by the trapezoid rule on the ROC curve; detection accuracy = max over thresholds of
½(TPR + TNR). FPR at 95% TPR follows the common OOD-benchmark convention instead: the FPR at the
highest threshold whose TPR is at least 95% (the first point of the ROC sweep with TPR ≥ 0.95),
so it is not always 1 − TNR at 95% TPR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def _roc(
    in_scores: NDArray[np.floating], out_scores: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(TPR, FPR) at every distinct threshold, from 'accept nothing' to 'accept everything'."""
    scores = np.concatenate([in_scores, out_scores]).astype(np.float64)
    positive = np.concatenate([np.ones(len(in_scores)), np.zeros(len(out_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # Cut only between distinct scores so tied scores move together.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(positive)[last_of_run]
    fp = np.cumsum(1 - positive)[last_of_run]
    tpr = np.r_[0.0, tp / max(len(in_scores), 1)]
    fpr = np.r_[0.0, fp / max(len(out_scores), 1)]
    return tpr, fpr


@dataclass(frozen=True)
class DetectionMetrics:
    auroc: float
    tnr_at_tpr95: float
    detection_accuracy: float
    fpr_at_tpr95: float


def detection_metrics(
    in_scores: NDArray[np.floating], out_scores: NDArray[np.floating]
) -> DetectionMetrics:
    """Metrics for scores where higher means more in-distribution."""
    tpr, fpr = _roc(in_scores, out_scores)
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    closest = int(np.argmin(np.abs(tpr - 0.95)))
    # TPR rises along the sweep to 1 (given any in-distribution score): argmax finds the first.
    first_at_95 = int(np.argmax(tpr >= 0.95))
    return DetectionMetrics(
        auroc=auroc,
        tnr_at_tpr95=float(1.0 - fpr[closest]),
        detection_accuracy=float(np.max(0.5 * (tpr + 1.0 - fpr))),
        fpr_at_tpr95=float(fpr[first_at_95]),
    )


@dataclass(frozen=True)
class SelectiveMetrics:
    """How a 'reliable / abstain' rule does on labelled data."""

    admitted_fraction: float
    marginal_accuracy: float  # accuracy over the admitted (nan if none)
    min_class_conditional_accuracy: float  # worst over true classes with admitted points
    min_prediction_conditional_accuracy: float  # worst over predicted classes with admitted points
    admitted: int


def selective_metrics(
    admitted: NDArray[np.bool_], predictions: NDArray[np.integer], labels: NDArray[np.integer]
) -> SelectiveMetrics:
    """Accuracy of the admitted points overall, per true class and per predicted class."""
    correct = predictions == labels

    def worst(groups: NDArray[np.integer]) -> float:
        accuracies = [correct[admitted & (groups == g)].mean() for g in np.unique(groups[admitted])]
        return float(min(accuracies)) if accuracies else math.nan

    n = int(admitted.sum())
    return SelectiveMetrics(
        admitted_fraction=float(admitted.mean()) if len(admitted) else math.nan,
        marginal_accuracy=float(correct[admitted].mean()) if n else math.nan,
        min_class_conditional_accuracy=worst(labels),
        min_prediction_conditional_accuracy=worst(predictions),
        admitted=n,
    )


def binomial_tolerance(alpha: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy α over n points."""
    return 1.96 * math.sqrt(alpha * (1.0 - alpha) / n) if n else math.inf


def expected_calibration_error(
    probabilities: NDArray[np.floating], labels: NDArray[np.integer], bins: int = 15
) -> float:
    """ECE of the top-class confidence over equal-width bins (Guo et al., 2017)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)
