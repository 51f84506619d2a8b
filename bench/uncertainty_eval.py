"""Evaluate Surety's uncertainty on the default models and write docs/uncertainty.md.

Per model (`digits`, `fortune-topics`, whichever the repository holds, calibrated):

- OOD detection, in-distribution = the test split: max-softmax (MSP) against Mahalanobis per
  tap and the ensemble — AUROC, TNR at TPR 95%, detection accuracy (Lee et al.'s definitions).
  OOD sets: digits — uniform-noise images and pixel-shuffled test digits; fortune-topics — the
  held-out topics `zippy` and `songs-poems`.
- Selective prediction at α: SDM (`sdm_reliable`) against "softmax ≥ α" and temperature-scaled
  "softmax ≥ α" (T fitted on calibration by NLL) — admitted fraction and marginal, worst
  class-conditional and worst prediction-conditional accuracy of the admitted, on the test
  split and the share admitted on each OOD set. Both the post-hoc SDM over the model's own head
  and a head trained with the SDM loss over the same tap.

    .venv/bin/python bench/uncertainty_eval.py [--model-repository model_repository]
        [--write docs/uncertainty.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.uncertainty import SDM, FeatureSet, Mahalanobis
from service.uncertainty.activation import KernelScaledSoftmax
from service.uncertainty.calibrate import ARTIFACT_DIR, softmax_rows
from service.uncertainty.evaluation import (
    DetectionMetrics,
    SelectiveMetrics,
    binomial_tolerance,
    detection_metrics,
    expected_calibration_error,
    selective_metrics,
)
from service.uncertainty.features import OfflineModel, feature_set
from service.uncertainty.sdm_training import train_sdm_head

SEED = 0


@dataclass(frozen=True)
class Splits:
    train: Path
    calibration: Path
    test: Path
    ood: dict[str, Path]


def digits_splits(entry: Path, scratch: Path) -> Splits:
    """The build's splits, plus two OOD sets made from the test split (seeded)."""
    data = entry / "data"
    records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(SEED)
    noise = [{"image": rng.uniform(0, 16, 64).round(0).tolist()} for _ in records]
    shuffled = [{"image": rng.permutation(np.asarray(r["image"])).tolist()} for r in records]
    ood = {}
    for name, rows in (("uniform noise", noise), ("pixel-shuffled digits", shuffled)):
        ood[name] = scratch / f"digits-{name.replace(' ', '-')}.jsonl"
        ood[name].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return Splits(data / "train.jsonl", data / "calibration.jsonl", data / "test.jsonl", ood)


def fortune_splits(entry: Path, scratch: Path) -> Splits:
    """The splits recorded by the fortune-topics export."""
    meta = json.loads((entry / "export.json").read_text())
    paths = {key: Path(value) for key, value in meta["data"]["splits"].items()}
    ood = {key.removeprefix("ood_"): path for key, path in paths.items() if key.startswith("ood_")}
    return Splits(paths["train"], paths["calibration"], paths["test"], ood)


MODELS = {"digits": digits_splits, "fortune-topics": fortune_splits}


def msp(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.asarray(softmax_rows(logits / temperature).max(axis=1))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T NLL(softmax(z/T), y) over a log-spaced grid refined once."""

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), labels].mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    best = float(grid[np.argmin([nll(t) for t in grid])])
    fine = np.linspace(best * 0.95, best * 1.05, 101)
    return float(fine[np.argmin([nll(t) for t in fine])])


def fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def detection_rows(
    maha: Mahalanobis,
    train: FeatureSet,
    calibration: FeatureSet,
    test: FeatureSet,
    oods: dict[str, FeatureSet],
) -> list[str]:
    """Every OOD set with the served detector, then the paper's protocol: the tap ensemble
    fitted by logistic regression on a seeded half of that OOD set, all methods scored on the
    other half."""
    rows = [
        "| OOD set | method | AUROC | TNR at TPR 95% | detection accuracy |",
        "|---|---|---|---|---|",
    ]
    in_taps = maha.tap_scores(test.taps)

    def add(name: str, method: str, in_scores: np.ndarray, out_scores: np.ndarray) -> None:
        m: DetectionMetrics = detection_metrics(in_scores, out_scores)
        cells = " | ".join(fmt(v) for v in (m.auroc, m.tnr_at_tpr95, m.detection_accuracy))
        rows.append(f"| {name} | {method} | {cells} |")

    for name, ood in oods.items():
        out_taps = maha.tap_scores(ood.taps)
        add(name, "MSP (max softmax)", msp(test.logits), msp(ood.logits))
        for i, tap in enumerate(maha.taps):
            add(name, f"Mahalanobis `{tap}`", in_taps[:, i], out_taps[:, i])
        ensemble = f"Mahalanobis ensemble ({maha.ensemble}, as served)"
        add(name, ensemble, maha.score(test.taps), maha.score(ood.taps))
    for name, ood in oods.items():
        order = np.random.default_rng(SEED).permutation(len(ood.labels))
        half = len(order) // 2
        fit_half = {tap: features[order[:half]] for tap, features in ood.taps.items()}
        held = {tap: features[order[half:]] for tap, features in ood.taps.items()}
        validated = Mahalanobis.fit(train, calibration, maha.taps, ood_validation=fit_half)
        label = f"{name}, held-out half"
        add(label, "MSP (max softmax)", msp(test.logits), msp(ood.logits[order[half:]]))
        add(label, "Mahalanobis ensemble (logistic, fitted on the other half)",
            validated.score(test.taps), validated.score(held))  # fmt: skip
    return rows


def selective_rows(
    label: str,
    alpha: float,
    rules: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]],
    test: FeatureSet,
    oods: dict[str, FeatureSet],
) -> list[str]:
    """rules: name → (admitted on test, {ood name: admitted})."""
    columns = ["variant", "rule", "admitted (test)", "marginal acc.", "worst class-cond. acc."]
    columns += ["worst pred.-cond. acc.", *(f"admitted ({n})" for n in oods)]
    header = "| " + " | ".join(columns) + " |"
    rows = [header, "|" + "---|" * (6 + len(oods))]
    for rule, (admitted, ood_admitted) in rules.items():
        m: SelectiveMetrics = selective_metrics(admitted, test.predictions, test.labels)
        ood_cells = " | ".join(fmt(float(ood_admitted[n].mean())) for n in oods)
        accuracies = (
            m.marginal_accuracy,
            m.min_class_conditional_accuracy,
            m.min_prediction_conditional_accuracy,
        )
        cells = " | ".join(fmt(v) for v in accuracies)
        admitted_cell = f"{fmt(m.admitted_fraction)} ({m.admitted})"
        rows.append(f"| {label} | {rule} | {admitted_cell} | {cells} | {ood_cells} |")
    return rows


def with_logits(features: FeatureSet, logits: np.ndarray) -> FeatureSet:
    return replace(features, logits=logits)


def evaluate(name: str, entry: Path, splits: Splits, version: int) -> list[str]:
    start = time.perf_counter()
    model = OfflineModel.load(entry, version)
    artifacts = entry / str(version) / ARTIFACT_DIR
    maha, sdm = Mahalanobis.load(artifacts), SDM.load(artifacts)
    train = feature_set(model, splits.train)
    calibration = feature_set(model, splits.calibration)
    test = feature_set(model, splits.test)
    oods = {n: feature_set(model, p, labelled=False) for n, p in splits.ood.items()}
    alpha = sdm.alpha
    temperature = fit_temperature(calibration.logits, calibration.labels)

    def sdm_admitted(estimator: SDM, logits_of: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        test_out = estimator.evaluate(test.taps, logits_of(test))
        return test_out["sdm_reliable"], {
            n: estimator.evaluate(o.taps, logits_of(o))["sdm_reliable"] for n, o in oods.items()
        }

    def threshold(t: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return msp(test.logits, t) >= alpha, {n: msp(o.logits, t) >= alpha for n, o in oods.items()}

    # The same estimator at a lower level: how the admitted share trades against α.
    relaxed_alpha = 0.9
    relaxed = SDM.fit(
        train, calibration, sdm.tap, KernelScaledSoftmax(), alpha=relaxed_alpha, k=sdm.k
    )
    post_hoc = {
        f"SDM `sdm_reliable` (tap `{sdm.tap}`)": sdm_admitted(sdm, lambda f: f.logits),
        f"SDM `sdm_reliable` at α = {relaxed_alpha} (q′_min {relaxed.q_prime_min:.3g})": (
            sdm_admitted(relaxed, lambda f: f.logits)
        ),
        f"softmax ≥ {alpha}": threshold(1.0),
        f"temperature-scaled softmax ≥ {alpha} (T = {temperature:.2f})": threshold(temperature),
    }

    # The same tap with a linear head trained with the SDM loss, then the post-hoc estimator
    # fitted on that head's logits (support = its training half, calibration = the real split).
    tap = sdm.tap
    head = train_sdm_head(
        train.taps[tap],
        train.labels,
        train.num_classes,
        shuffles=3,
        epochs=40,
        learning_rate=2e-2,
        seed=SEED,
    )

    def head_logits(features: FeatureSet) -> np.ndarray:
        return np.asarray(features.taps[tap] @ head.weight.T + head.bias)

    support = FeatureSet(
        taps={tap: train.taps[tap][head.train_indices]},
        logits=head_logits(train)[head.train_indices],
        labels=train.labels[head.train_indices],
    )
    trained = SDM.fit(
        support,
        with_logits(calibration, head_logits(calibration)),
        tap,
        KernelScaledSoftmax(),
        alpha=alpha,
        k=sdm.k,
    )
    trained_test = with_logits(test, head_logits(test))
    trained_rules = {f"SDM `sdm_reliable` (tap `{tap}`)": sdm_admitted(trained, head_logits)}

    accuracy = float(np.mean(test.predictions == test.labels))
    ece = expected_calibration_error(softmax_rows(test.logits), test.labels)
    trained_accuracy = float(np.mean(trained_test.predictions == test.labels))
    lines = [
        f"## {name}",
        "",
        f"Test split: {len(test.labels)} inputs, accuracy {accuracy:.4f}; calibration "
        f"{len(calibration.labels)}, train (SDM support) {len(train.labels)}; OOD sets: "
        + ", ".join(f"{n} ({len(o.labels)})" for n, o in oods.items())
        + f". Softmax ECE on test {ece:.4f}; "
        f"fitted temperature {temperature:.3f}. SDM: α = {alpha}, k = {sdm.k}, "
        f"q′_min = {sdm.q_prime_min:.3g}. Binomial 95% tolerance at α for n admitted: "
        "1.96·√(α(1−α)/n).",
        "",
        "### OOD detection (positive = in-distribution test split)",
        "",
        *detection_rows(maha, train, calibration, test, oods),
        "",
        f"### Selective prediction at α = {alpha}",
        "",
        *selective_rows("post-hoc (model's head)", alpha, post_hoc, test, oods),
        *selective_rows("SDM-trained head", alpha, trained_rules, trained_test, oods)[2:],
        "",
        f"SDM-trained head: test accuracy {trained_accuracy:.4f}, class-balanced calibration "
        f"loss {head.calibration_loss:.4f}, q′_min {trained.q_prime_min:.3g}.",
        "",
    ]
    reliable = post_hoc[f"SDM `sdm_reliable` (tap `{sdm.tap}`)"][0]
    n = int(reliable.sum())
    if n:
        pred_acc = selective_metrics(reliable, test.predictions, test.labels).marginal_accuracy
        lines.append(
            f"Post-hoc SDM admitted {n} test inputs at accuracy {pred_acc:.3f} "
            f"(α − tolerance = {alpha - binomial_tolerance(alpha, n):.3f})."
        )
        lines.append("")
    print(f"{name}: evaluated in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--write", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    sections = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, splits_of in MODELS.items():
            entry = args.model_repository / name
            if not (entry / str(args.version) / ARTIFACT_DIR).is_dir():
                print(
                    f"{name}: not built or not calibrated in {args.model_repository}; skipped",
                    file=sys.stderr,
                )
                continue
            sections += evaluate(name, entry, splits_of(entry, Path(scratch)), args.version)
    text = "\n".join(sections)
    print(text)
    if args.write is not None:
        template = args.write.read_text() if args.write.exists() else ""
        marker = "<!-- results -->"
        head = template.split(marker)[0] if marker in template else template
        args.write.write_text(head.rstrip() + f"\n\n{marker}\n\n" + text + "\n")


if __name__ == "__main__":
    main()
