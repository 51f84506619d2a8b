"""`surety calibrate`: choose and fit the OOD detector and SDM of a model version."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surety_serving.uncertainty.activation import KernelScaledSoftmax

# Re-exported: the calibration report tooling in bench/ reads the folder name from here.
from surety_serving.uncertainty.artifacts import ARTIFACT_DIR as ARTIFACT_DIR
from surety_serving.uncertainty.base import FeatureSet
from surety_serving.uncertainty.evaluation import expected_calibration_error
from surety_serving.uncertainty.features import OfflineModel, feature_set
from surety_serving.uncertainty.ood import candidates
from surety_serving.uncertainty.sdm import SDM
from surety_serving.uncertainty.selection import select

REPORT_FILE = "report.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationOptions:
    """What `surety calibrate` takes besides the model."""

    train: Path
    calibration: Path
    ood_validation: tuple[Path, ...] = ()
    background: tuple[Path, ...] = ()  # JSONL of background text: the genre detector's negatives
    test: Path | None = None
    alpha: float | None = None  # None: the model's `uncertainty.alpha`
    k: int = 1000


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def selective_report(sdm: SDM, test: FeatureSet) -> dict[str, Any]:
    """SDM's admitted share of a labelled split and the admitted accuracy, with Wilson intervals."""
    reliable = sdm.evaluate(test.taps, test.logits)["sdm_reliable"]
    admitted = int(reliable.sum())
    correct = int((test.predictions[reliable] == test.labels[reliable]).sum())
    return {
        "size": len(reliable),
        "admitted": admitted,
        "admitted_share": admitted / len(reliable),
        "admitted_share_ci95": wilson_interval(admitted, len(reliable)),
        "admitted_accuracy": correct / admitted if admitted else None,
        "admitted_accuracy_ci95": wilson_interval(correct, admitted) if admitted else None,
        "accuracy": float(np.mean(test.predictions == test.labels)),
    }


def calibrate(
    model: OfflineModel, version_dir: Path, options: CalibrationOptions
) -> dict[str, Any]:
    """Choose and fit the OOD detector and SDM on the splits, write `<version>/uncertainty/`.

    Returns the fit report (also written as report.json).
    """
    config = model.config
    spec = config.uncertainty
    if spec.logits is None or not spec.taps:
        raise ValueError("config.yaml names no uncertainty taps and logits for this model")
    names = spec.features
    train = feature_set(model, options.train, features=names)
    calibration = feature_set(model, options.calibration, features=names)
    validation = {
        path.stem: feature_set(model, path, labelled=False, features=names)
        for path in options.ood_validation
    }
    specs = candidates(spec.taps, spec.token_score, train.texts is not None, options.background)
    log.info("choosing the OOD detector set among %d candidates", len(specs))
    served_ood = select(train, calibration, validation, specs, forced=spec.ood_method)
    log.info("OOD detectors: %s", ", ".join(served_ood.names))
    alpha = options.alpha if options.alpha is not None else spec.alpha
    log.info("fitting SDM (%s calibration, alpha %s)", spec.sdm_calibration, alpha)
    sdm_tap = spec.sdm_tap or spec.taps[-1]
    if spec.sdm_calibration == "cross_fitted":
        labelled = FeatureSet(
            taps={sdm_tap: np.vstack([train.taps[sdm_tap], calibration.taps[sdm_tap]])},
            logits=np.vstack([train.logits, calibration.logits]),
            labels=np.concatenate([train.labels, calibration.labels]),
        )
        sdm = SDM.fit_cross_fitted(labelled, sdm_tap, KernelScaledSoftmax(), alpha, options.k)
    else:
        sdm = SDM.fit(train, calibration, sdm_tap, KernelScaledSoftmax(), alpha, options.k)
    directory = version_dir / ARTIFACT_DIR
    shutil.rmtree(directory, ignore_errors=True)  # no artifact of an earlier fit may linger
    served_ood.save(directory)
    sdm.save(directory)
    calibration_probabilities = softmax_rows(calibration.logits)
    report: dict[str, Any] = {
        "train": str(options.train),
        "calibration": str(options.calibration),
        "ood_validation": [str(path) for path in options.ood_validation],
        "background": [str(path) for path in options.background],
        "classes": config.labels,
        "train_per_class": np.bincount(train.labels, minlength=len(config.labels)).tolist(),
        "calibration_per_class": np.bincount(
            calibration.labels, minlength=len(config.labels)
        ).tolist(),
        "calibration_accuracy": float(np.mean(calibration.predictions == calibration.labels)),
        "softmax_ece": expected_calibration_error(calibration_probabilities, calibration.labels),
        "ood": {
            "members": [
                {"role": m.role, "method": m.name, "params": m.detector.params()}
                for m in served_ood.members
            ],
            "level": spec.ood_level,
            "selection": served_ood.selection,
        },
        "sdm": {**sdm.report(), "calibration": spec.sdm_calibration},
    }
    if options.test is not None:
        report["test"] = {"file": str(options.test)}
        test = feature_set(model, options.test, features=names)
        report["sdm"]["test"] = selective_report(sdm, test)
        flagged = served_ood.evaluate(test.features(), test.logits, spec.ood_level)["ood"]
        report["ood"]["test_flagged_share"] = float(np.mean(flagged))
    (directory / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def calibrate_entry(entry: Path, version: int, options: CalibrationOptions) -> dict[str, Any]:
    """Calibrate `<entry>/<version>` (config.yaml + model.onnx) on the given splits."""
    return calibrate(OfflineModel.load(entry, version), entry / str(version), options)


def describe(report: dict[str, Any]) -> str:
    """One line of the fit report's key figures."""
    sdm = report["sdm"]
    line = (
        f"OOD detectors {', '.join(m['method'] for m in report['ood']['members'])}, "
        f"support {sdm['support_size']}, "
        f"q'_min {sdm['q_prime_min']:.3g} at alpha {sdm['alpha']}, calibration accuracy "
        f"{report['calibration_accuracy']:.4f}, softmax ECE {report['softmax_ece']:.4f}"
    )
    if "test" in sdm:
        test = sdm["test"]
        line += f", SDM admits {test['admitted_share']:.1%} of the test split"
        if test["admitted_accuracy"] is not None:
            line += f" at accuracy {test['admitted_accuracy']:.3f}"
    return line


def calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """`surety calibrate MODEL --train F --calibration F [--ood-validation F ...] [--test F] ..."""
    parser.add_argument("model", help="model name in the repository")
    parser.add_argument("--train", type=Path, required=True, help="labelled JSONL: support set")
    parser.add_argument(
        "--calibration", type=Path, required=True, help="labelled JSONL held out from training"
    )
    parser.add_argument(
        "--ood-validation",
        type=Path,
        action="append",
        default=[],
        help="JSONL of out-of-distribution inputs (repeatable): the OOD detector set served is "
        "chosen on these sets (see docs/uncertainty.md)",
    )
    parser.add_argument(
        "--background",
        type=Path,
        action="append",
        default=[],
        help="JSONL of background text (a 'text' field; repeatable), for a text model: the "
        "genre detector learns the training texts against it (`surety data background` makes "
        "one); never an OOD-validation or evaluation set",
    )
    parser.add_argument(
        "--test", type=Path, help="labelled JSONL: report SDM's admitted share and accuracy on it"
    )
    parser.add_argument(
        "--alpha", type=float, help="SDM reliability level (default: the model's, 0.95 if unset)"
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
        ood_validation=tuple(args.ood_validation),
        background=tuple(args.background),
        test=args.test,
        alpha=args.alpha,
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
