"""The rule that chooses a model's OOD detector at calibration (offline): every candidate of
:func:`~surety_serving.uncertainty.ood.candidates` fitted on the train split and ranked by its mean
AUROC
of the calibration split against the OOD-validation sets, or a fixed fallback without them.
docs/uncertainty.md states the rule; ``ServedOOD.selection`` records each candidate's AUROCs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from surety_serving.uncertainty.base import FeatureSet
from surety_serving.uncertainty.detectors import Detector, fit_detector
from surety_serving.uncertainty.evaluation import detection_metrics
from surety_serving.uncertainty.mahalanobis import standardisation
from surety_serving.uncertainty.ood import CandidateSpec, ServedOOD

__all__ = ["RULE_BEST", "RULE_FALLBACK", "select"]

RULE_BEST = "highest mean AUROC of calibration against the OOD-validation sets; ties: earliest"
RULE_FALLBACK = "no OOD-validation set: first combined candidate, else first normalised mahalanobis"


def _candidate_record(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"method": method, "params": dict(params), "auroc": {}, "mean_auroc": None}


def select(
    train: FeatureSet,
    calibration: FeatureSet,
    validation_ood: Mapping[str, FeatureSet],
    specs: Sequence[CandidateSpec],
    keep_fraction: float = 0.95,
    forced: str | None = None,
) -> ServedOOD:
    """The detector chosen by the rule (this module's docstring), fitted and thresholded: its
    score standardised on the calibration split (mean 0, std 1, the std floored), the threshold
    the (1 − ``keep_fraction``) lower empirical quantile there (an order statistic: at least
    ``keep_fraction`` of the calibration split is kept). ``forced`` restricts the choice to one
    method's candidates."""
    if not 0.0 < keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
    if not specs:
        raise ValueError("no OOD candidates to select from")
    for name, ood in validation_ood.items():
        if len(ood.logits) == 0:
            raise ValueError(f"OOD-validation set {name!r} is empty")
    if forced is not None and all(method != forced for method, _ in specs):
        known = sorted({method for method, _ in specs})
        raise ValueError(f"forced OOD method {forced!r} is not a candidate ({known})")
    eligible = [i for i, (method, _) in enumerate(specs) if forced is None or method == forced]
    records = [_candidate_record(method, params) for method, params in specs]
    fitted: dict[int, Detector] = {}

    if validation_ood:
        rule = RULE_BEST
        for i, (method, params) in enumerate(specs):
            detector = fitted[i] = fit_detector(train, calibration, method, params)
            in_scores = detector.score(calibration.taps, calibration.logits)
            aurocs = {
                name: detection_metrics(in_scores, detector.score(ood.taps, ood.logits)).auroc
                for name, ood in validation_ood.items()
            }
            records[i].update(auroc=aurocs, mean_auroc=float(np.mean(list(aurocs.values()))))
        # max keeps the first of equal keys: ties go to the earlier candidate.
        chosen = max(eligible, key=lambda i: records[i]["mean_auroc"])
    else:
        rule = RULE_FALLBACK
        chosen = eligible[0] if forced is not None else _fallback(specs)
        fitted[chosen] = fit_detector(train, calibration, *specs[chosen])
    if forced is not None:
        rule = f"forced by config to {forced!r}, then: {rule}"

    detector = fitted[chosen]
    raw = detector.score(calibration.taps, calibration.logits)
    column_mean, column_std = standardisation(raw[:, None])
    mean, std = float(column_mean[0]), float(column_std[0])
    standardised = (raw - mean) / std
    threshold = float(np.quantile(standardised, 1.0 - keep_fraction, method="lower"))
    selection = {
        "rule": rule,
        "validation_sets": list(validation_ood),
        "candidates": records,
        "chosen": chosen,
    }
    return ServedOOD(
        detector=detector,
        mean=mean,
        std=std,
        threshold=threshold,
        keep_fraction=keep_fraction,
        num_classes=calibration.num_classes,
        selection=selection,
    )


def _fallback(specs: Sequence[CandidateSpec]) -> int:
    """The fixed choice without validation data (rule 4)."""
    for i, (method, _) in enumerate(specs):
        if method == "combined":
            return i
    for i, (method, params) in enumerate(specs):
        if method == "mahalanobis" and params.get("normalise") is True:
            return i
    raise ValueError("no OOD-validation set and no combined or normalised mahalanobis candidate")
