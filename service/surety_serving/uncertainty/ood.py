"""The served OOD score of a model (:class:`ServedOOD`: a detector of the
`detectors.DETECTORS` registry, standardised and thresholded on the calibration split) and the
candidates calibration chooses it from (:func:`candidates`); the choice itself is offline,
:mod:`surety_serving.uncertainty.selection`. docs/uncertainty.md states the rule and the
threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import ArtifactError, FloatArray
from surety_serving.uncertainty.detectors import DETECTORS, Detector

STEM = "ood"

CandidateSpec = tuple[str, dict[str, Any]]


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
