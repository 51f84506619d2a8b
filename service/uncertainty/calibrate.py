"""`surety calibrate`: fit Mahalanobis and SDM for a model version and write its artifacts."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.uncertainty.activation import KernelScaledSoftmax
from service.uncertainty.evaluation import expected_calibration_error
from service.uncertainty.features import OfflineModel, feature_set
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
    model: OfflineModel, version_dir: Path, options: CalibrationOptions
) -> dict[str, Any]:
    """Fit both methods on the splits and write `<version>/uncertainty/`; returns the report."""
    config = model.config
    spec = config.uncertainty
    if spec.logits is None or not spec.taps:
        raise ValueError("config.yaml names no uncertainty taps and logits for this model")
    train = feature_set(model, options.train)
    calibration = feature_set(model, options.calibration)
    ood = (
        feature_set(model, options.ood_validation, labelled=False).taps
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


def calibrate_entry(entry: Path, version: int, options: CalibrationOptions) -> dict[str, Any]:
    """Calibrate `<entry>/<version>` (config.yaml + model.onnx) on the given splits."""
    return calibrate(OfflineModel.load(entry, version), entry / str(version), options)


def describe(report: dict[str, Any]) -> str:
    """One line of the fit report's key figures."""
    sdm = report["sdm"]
    return (
        f"support {sdm['support_size']}, q'_min {sdm['q_prime_min']:.3g} at alpha "
        f"{sdm['alpha']}, calibration accuracy {report['calibration_accuracy']:.4f}, "
        f"softmax ECE {report['softmax_ece']:.4f}, Mahalanobis {report['mahalanobis']['ensemble']}"
    )


def calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """`surety calibrate MODEL --train F --calibration F [--ood-validation F] [--alpha A] ...`."""
    parser.add_argument("model", help="model name in the repository")
    parser.add_argument("--train", type=Path, required=True, help="labelled JSONL: support set")
    parser.add_argument(
        "--calibration", type=Path, required=True, help="labelled JSONL held out from training"
    )
    parser.add_argument(
        "--ood-validation",
        type=Path,
        help="JSONL of out-of-distribution inputs: fit the Mahalanobis tap ensemble by "
        "logistic regression instead of averaging standardised tap scores",
    )
    parser.add_argument("--alpha", type=float, default=0.95, help="SDM reliability level")
    parser.add_argument(
        "--keep-fraction",
        type=float,
        default=0.95,
        help="share of in-distribution calibration inputs the OOD threshold keeps",
    )
    parser.add_argument("--k", type=int, default=1000, help="SDM neighbours searched")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--version", type=int, help="version folder (default: the highest)")


def calibrate_command(args: argparse.Namespace) -> int:
    """Fit, write `<version>/uncertainty/`, print the report's key figures."""
    entry: Path = args.model_repository / args.model
    if not entry.is_dir():
        print(f"calibrate: no model '{args.model}' in {args.model_repository}", file=sys.stderr)
        return 2
    versions = sorted(int(p.name) for p in entry.iterdir() if p.is_dir() and p.name.isdigit())
    version = args.version if args.version is not None else (versions[-1] if versions else None)
    if version is None or version not in versions:
        print(f"calibrate: {entry} has no version {args.version or ''}".rstrip(), file=sys.stderr)
        return 2
    options = CalibrationOptions(
        train=args.train,
        calibration=args.calibration,
        ood_validation=args.ood_validation,
        alpha=args.alpha,
        keep_fraction=args.keep_fraction,
        k=args.k,
    )
    try:
        report = calibrate_entry(entry, version, options)
    except (ValueError, OSError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model} version {version}: {describe(report)}")
    print(f"artifacts and report.json in {entry / str(version) / ARTIFACT_DIR}")
    return 0
