"""The served OOD score of a model, and the rule that chooses its detector at calibration.

Candidates (`candidates`) are data: (method, params) pairs of the `detectors.DETECTORS` registry.

The selection rule (`select`):

1. Fit every candidate on the train split (those that standardise also use the calibration split).
2. Score the calibration split (in-distribution, the positive class) and each OOD-validation set,
   and take the AUROC of each set against the calibration split.
3. Serve the candidate with the highest mean AUROC over the validation sets; on a tie, the one
   earlier in the candidate list. The test split and the evaluation OOD sets are never seen.
4. With no validation set there is nothing to rank by, so a fixed fallback is served: the first
   `combined` candidate, else the first L2-normalised `mahalanobis` candidate (the last tap in
   `candidates()`'s order); a list with neither is an error.
5. A method forced by config.yaml (`forced`) restricts steps 3–4 to the candidates of that method:
   the best-ranked of them, or with no validation set the first of them.

Every candidate's per-set AUROC is recorded in `ServedOOD.selection`.

The served score is standardised on the calibration split, s(x) = (S(x) − m) / σ, with m and σ
(floored at 1e-12) the mean and standard deviation of the raw detector score S there, so 0 is a
typical calibration input whatever the detector. The threshold τ is the (1 − keep_fraction) lower
empirical quantile of s over the calibration split (numpy's `method="lower"`: an order statistic,
not an interpolation), and an input is flagged `ood` when s(x) < τ or s(x) is nan; at least
keep_fraction of the calibration split is kept (more when scores tie at τ).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import ArtifactError, FeatureSet, FloatArray
from surety_serving.uncertainty.detectors import DETECTORS, Detector, fit_detector
from surety_serving.uncertainty.evaluation import detection_metrics
from surety_serving.uncertainty.mahalanobis import standardisation

STEM = "ood"

CandidateSpec = tuple[str, dict[str, Any]]

RULE_BEST = "highest mean AUROC of calibration against the OOD-validation sets; ties: earliest"
RULE_FALLBACK = "no OOD-validation set: first combined candidate, else first normalised mahalanobis"


def candidates(taps: Sequence[str], token_score: str | None) -> list[CandidateSpec]:
    """What calibration tries, in order (the order breaks ties and picks the fallback)."""
    if not taps:
        raise ValueError("candidates need at least one tap")
    last = taps[-1]
    normalised_last = {"tap": last, "normalise": True}
    specs: list[CandidateSpec] = [("msp", {}), ("energy", {})]
    # dict.fromkeys: the middle tap is the last one when a model has one or two taps.
    for tap in dict.fromkeys([last, taps[len(taps) // 2]]):
        specs += [("mahalanobis", {"tap": tap, "normalise": n}) for n in (True, False)]
    specs += [
        ("relative_mahalanobis", dict(normalised_last)),
        ("knn", {"tap": last, "k": 1}),
        ("knn", {"tap": last, "k": 10}),
        ("tap_ensemble", {"taps": list(taps), "normalise": True}),
    ]
    if token_score:
        token = {"output": token_score}
        specs += [
            ("token_density", token),
            (
                "combined",
                {
                    "parts": [
                        {"method": "mahalanobis", "params": dict(normalised_last)},
                        {"method": "token_density", "params": dict(token)},
                    ]
                },
            ),
        ]
    return specs


@dataclass(frozen=True)
class ServedOOD:
    """The chosen detector, its standardisation and threshold on calibration, and why it won."""

    detector: Detector
    mean: float
    std: float
    threshold: float  # in standardised units
    keep_fraction: float
    num_classes: int  # of the model it was fitted for
    selection: dict[str, Any]  # JSON: the rule, the candidates and their validation AUROCs

    @property
    def method(self) -> str:
        return self.detector.method

    def standardised(
        self, features: Mapping[str, FloatArray], logits: FloatArray
    ) -> NDArray[np.float64]:
        """s(x) = (S(x) − m) / σ for a batch."""
        return (self.detector.score(features, logits) - self.mean) / self.std

    def evaluate(
        self, features: Mapping[str, FloatArray], logits: FloatArray
    ) -> dict[str, NDArray[Any]]:
        """`mahalanobis_score` (the standardised score, float32; the name predates the other
        detectors and is the API's) and `ood` (score below the threshold, or nan), each [B]."""
        score = self.standardised(features, logits)
        # Not `score < threshold`: a nan score (non-finite model outputs) must not pass as typical.
        return {"mahalanobis_score": score.astype(np.float32), "ood": ~(score >= self.threshold)}

    def save(self, directory: Path) -> None:
        """Write `ood.npz` (the detector's arrays) and `ood.json` (everything else)."""
        meta = {
            "method": self.method,
            "params": self.detector.params(),
            "mean": self.mean,
            "std": self.std,
            "threshold": self.threshold,
            "keep_fraction": self.keep_fraction,
            "num_classes": self.num_classes,
            "selection": self.selection,
        }
        artifacts.write(directory, STEM, self.detector.arrays(), meta)

    @classmethod
    def load(cls, directory: Path) -> ServedOOD:
        """Read what `save` wrote; ArtifactError naming the file when anything is wrong."""
        arrays, meta = artifacts.read(directory, STEM)
        json_path = directory / f"{STEM}.json"
        method = meta.get("method")
        if not isinstance(method, str) or method not in DETECTORS:
            raise ArtifactError(
                f"{json_path}: unknown OOD method {method!r} (known: {sorted(DETECTORS)})"
            )
        try:
            mean, std = float(meta["mean"]), float(meta["std"])
            threshold, keep_fraction = float(meta["threshold"]), float(meta["keep_fraction"])
            num_classes, selection = meta["num_classes"], meta["selection"]
            if not (np.isfinite([mean, std, threshold]).all() and std > 0):
                raise ValueError(f"mean {mean}, std {std}, threshold {threshold}")
            if not 0.0 < keep_fraction < 1.0:
                raise ValueError(f"keep_fraction {keep_fraction} not in (0, 1)")
            if not isinstance(num_classes, int) or isinstance(num_classes, bool):
                raise TypeError(f"num_classes {num_classes!r} is not an integer")
            params = meta["params"]
            if not isinstance(params, dict) or not isinstance(selection, dict):
                raise TypeError("params and selection must be objects")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{json_path}: bad field ({exc})") from exc
        detector = DETECTORS[method].restore(params, arrays, directory / f"{STEM}.npz")
        return cls(detector, mean, std, threshold, keep_fraction, num_classes, selection)

    def check_model(self, widths: Mapping[str, int], num_classes: int) -> None:
        """ArtifactError unless every input the detector reads is a model output of the width it
        was fitted on, and the model has the classes it was fitted for."""
        for name, width in self.detector.inputs().items():
            if name not in widths:
                raise ArtifactError(
                    f"{STEM}: {self.method} reads {name!r}, which is not an output of the model"
                )
            if widths[name] != width:
                raise ArtifactError(
                    f"{STEM}: {name!r} has {widths[name]} features in the model, "
                    f"{width} in the artifact"
                )
        if num_classes != self.num_classes:
            raise ArtifactError(
                f"{STEM}: {self.num_classes} classes in the artifact, {num_classes} in the model"
            )


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
    """The detector chosen by the rule of this module's docstring, fitted and thresholded."""
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
