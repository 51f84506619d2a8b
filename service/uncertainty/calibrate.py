"""`surety calibrate`: fit Mahalanobis and SDM for a model version and write its artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.config import ModelConfig
from service.uncertainty.activation import KernelScaledSoftmax
from service.uncertainty.evaluation import expected_calibration_error
from service.uncertainty.features import Runner, feature_set
from service.uncertainty.mahalanobis import Mahalanobis
from service.uncertainty.sdm import SDM

ARTIFACT_DIR = "uncertainty"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class CalibrationOptions:
    """What `surety calibrate` takes besides the model."""

    train: Path
    calibration: Path
    ood_validation: Path | None = None
    alpha: float = 0.95
    keep_fraction: float = 0.95
    k: int = 1000


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def calibrate(
    run: Runner, config: ModelConfig, version_dir: Path, options: CalibrationOptions
) -> dict[str, Any]:
    """Fit both methods on the splits and write `<version>/uncertainty/`; returns the report."""
    spec = config.uncertainty
    if spec.logits is None or not spec.taps:
        raise ValueError("config.yaml names no uncertainty taps and logits for this model")
    train = feature_set(run, config, options.train)
    calibration = feature_set(run, config, options.calibration)
    ood = (
        feature_set(run, config, options.ood_validation, labelled=False).taps
        if options.ood_validation is not None
        else None
    )
    mahalanobis = Mahalanobis.fit(
        train, calibration, tuple(spec.taps), ood, keep_fraction=options.keep_fraction
    )
    sdm = SDM.fit(
        train,
        calibration,
        spec.sdm_tap or spec.taps[-1],
        KernelScaledSoftmax(),
        alpha=options.alpha,
        k=options.k,
    )
    directory = version_dir / ARTIFACT_DIR
    mahalanobis.save(directory)
    sdm.save(directory)
    calibration_probabilities = softmax_rows(calibration.logits)
    report = {
        "train": str(options.train),
        "calibration": str(options.calibration),
        "ood_validation": None if options.ood_validation is None else str(options.ood_validation),
        "classes": config.labels,
        "train_per_class": np.bincount(train.labels, minlength=len(config.labels)).tolist(),
        "calibration_per_class": np.bincount(
            calibration.labels, minlength=len(config.labels)
        ).tolist(),
        "calibration_accuracy": float(np.mean(calibration.predictions == calibration.labels)),
        "softmax_ece": expected_calibration_error(calibration_probabilities, calibration.labels),
        "mahalanobis": {
            "taps": list(mahalanobis.taps),
            "ensemble": mahalanobis.ensemble,
            "threshold": mahalanobis.threshold,
            "keep_fraction": mahalanobis.keep_fraction,
        },
        "sdm": sdm.report(),
    }
    (directory / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
