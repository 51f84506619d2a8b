"""Evaluate Surety's uncertainty on the default models and write docs/uncertainty.md.

Per model (`digits`, `fortune-topics`, whichever the repository holds, calibrated):

- OOD detection, in-distribution = the test split: every candidate of the detector registry
  (`surety_serving.uncertainty.ood.candidates`) alone, as a conformal p-value against the
  calibration split, and the served set's combined p-value, on every evaluation OOD set — AUROC,
  the share of the set not flagged at the model's `ood_level` (FPR), the test split's flagged
  share — with the set's members marked and the validation AUROC the selection rule saw beside
  them. OOD sets: digits — uniform-noise
  images and pixel-shuffled test digits; fortune-topics — the held-out fortune topics `zippy`
  and `songs-poems` (near OOD), Linux man-page paragraphs (`manpages`, far OOD) and German man
  pages (`manpages-de`, far OOD of a kind no background or validation set holds).
- Length robustness (text): AUROC on `songs-poems` by text length, and the rank correlation of
  the score with length on the test split, for the served detector and the raw vs L2-normalised
  Mahalanobis of the last tap.
- Selective prediction at the model's α: SDM as served (post hoc, support = train, calibration
  split), SDM cross-fitted over train ∪ calibration, SDM over a head trained with the SDM loss,
  and "softmax ≥ α" with and without temperature scaling — admitted share of the test split and
  admitted accuracy with Wilson 95% intervals, and the share admitted of each OOD set.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from surety_serving.data.doc_text import prepare_doc_text
from surety_serving.uncertainty import SDM, FeatureSet, ServedOOD
from surety_serving.uncertainty.activation import KernelScaledSoftmax
from surety_serving.uncertainty.calibrate import ARTIFACT_DIR, softmax_rows, wilson_interval
from surety_serving.uncertainty.detectors import Detector, fit_detector
from surety_serving.uncertainty.evaluation import detection_metrics, selective_metrics
from surety_serving.uncertainty.features import OfflineModel, feature_set, read_jsonl
from surety_serving.uncertainty.ood import Candidate, candidates, conformal_p_values
from surety_serving.uncertainty.sdm_training import train_sdm_head

SEED = 0


@dataclass(frozen=True)
class Splits:
    train: Path
    calibration: Path
    test: Path
    ood: dict[str, Path]  # evaluation sets: never seen by calibration
    text: str | None = None  # the text input's name, for length buckets


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
    """The splits recorded by the fortune-topics export, and the far-OOD man-page set."""
    meta = json.loads((entry / "export.json").read_text())
    paths = {key: Path(value) for key, value in meta["data"]["splits"].items()}
    ood = {key.removeprefix("ood_"): path for key, path in paths.items() if key.startswith("ood_")}
    ood = {name: path for name, path in ood.items() if not name.startswith("validation_")}
    far = prepare_doc_text()
    ood["manpages (far)"] = far["manpages"]
    ood["manpages-de (far, German)"] = far["manpages-de"]
    return Splits(paths["train"], paths["calibration"], paths["test"], ood, text="text")


MODELS = {"digits": digits_splits, "fortune-topics": fortune_splits}

#: A selective rule's admissions on the test split, on each OOD set, and the test predictions
#: its admissions are judged by.
Rule = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]


def fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def label(method: str, params: Mapping[str, object]) -> str:
    """A candidate as a table cell: method and its parameters."""
    shown = ", ".join(f"{k}={v if k != 'taps' else 'all'}" for k, v in params.items())
    return f"`{method}`" + (f" ({shown})" if shown else "")


def at_level(
    in_p: np.ndarray, out_p: Mapping[str, np.ndarray], level: float
) -> tuple[list[str], float]:
    """Cells "AUROC / FPR" per OOD set (FPR: the share of the set not flagged at the level) and
    the share of the in-distribution test split flagged."""
    cells = []
    for p in out_p.values():
        auroc = detection_metrics(in_p, p).auroc
        cells.append(f"{fmt(auroc)} / {fmt(float(np.mean(p >= level)))}")
    return cells, float(np.mean(in_p < level))


def detection_section(
    served: ServedOOD,
    level: float,
    train: FeatureSet,
    calibration: FeatureSet,
    test: FeatureSet,
    oods: dict[str, FeatureSet],
    specs: list[Candidate],
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Every candidate alone (its conformal p-value against the whole calibration split) and the
    served set's combined p-value: AUROC and FPR at the level per OOD set, and the test split's
    flagged share. Returns the table and the AUROC per (row, OOD set)."""
    records = served.selection.get("candidates", [])
    validation = {(r["method"], json.dumps(r["params"], sort_keys=True)): r for r in records}
    members = {(m.name, json.dumps(m.detector.params(), sort_keys=True)) for m in served.members}
    columns = ["detector", "role", "validation mean AUROC"]
    columns += [*(f"{n}: AUROC / FPR at {level}" for n in oods), "test flagged"]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table: dict[str, dict[str, float]] = {}
    for candidate in specs:
        detector: Detector = fit_detector(train, calibration, candidate.method, candidate.params)
        key = (candidate.method, json.dumps(detector.params(), sort_keys=True))
        name = label(candidate.method, candidate.params) + (
            " **(in set)**" if key in members else ""
        )
        reference = np.sort(detector.score(calibration.features(), calibration.logits))
        in_p = conformal_p_values(reference, detector.score(test.features(), test.logits))
        out_p = {
            n: conformal_p_values(reference, detector.score(o.features(), o.logits))
            for n, o in oods.items()
        }
        cells, flagged = at_level(in_p, out_p, level)
        table[name] = {n: detection_metrics(in_p, p).auroc for n, p in out_p.items()}
        record = validation.get(key)
        mean_auroc = None if record is None else record.get("mean_auroc")
        rows.append(
            f"| {name} | {candidate.role} | {fmt(mean_auroc)} | "
            + " | ".join(cells)
            + f" | {fmt(flagged)} |"
        )
    in_p = served.evaluate(test.features(), test.logits, level)["ood_p_value"]
    out_p = {
        n: served.evaluate(o.features(), o.logits, level)["ood_p_value"] for n, o in oods.items()
    }
    cells, flagged = at_level(in_p, out_p, level)
    name = f"**served: min of {', '.join(served.names)}, calibrated**"
    table[name] = {n: detection_metrics(in_p, p).auroc for n, p in out_p.items()}
    rows.append(f"| {name} | set | – | " + " | ".join(cells) + f" | {fmt(flagged)} |")
    return rows, table


def length_section(
    detectors: dict[str, Detector],
    test: FeatureSet,
    test_words: np.ndarray,
    ood: FeatureSet,
    ood_words: np.ndarray,
    ood_name: str,
) -> list[str]:
    """AUROC of the whole test split against the OOD set's texts of each length band, and the
    rank correlation of score and length on the test split (a detector that pulls long texts
    toward the class centres has a positive one)."""
    bands = [(0, 20), (20, 60), (60, 10**9)]
    names = [f"{lo}–{hi} words" if hi < 10**9 else f"≥ {lo} words" for lo, hi in bands]
    counts = [int(((ood_words >= lo) & (ood_words < hi)).sum()) for lo, hi in bands]
    header = ["detector", *(f"{ood_name} {n} ({c})" for n, c in zip(names, counts, strict=True))]
    header.append("Spearman ρ(score, length), test")
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, detector in detectors.items():
        in_scores = detector.score(test.taps, test.logits)
        out_scores = detector.score(ood.taps, ood.logits)
        cells = []
        for lo, hi in bands:
            band = (ood_words >= lo) & (ood_words < hi)
            cells.append(fmt(detection_metrics(in_scores, out_scores[band]).auroc))
        rho = spearman(in_scores, test_words)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {rho:+.3f} |")
    return rows


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ: the correlation of the ranks, ties given their average rank."""

    def ranks(x: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        first = np.cumsum(counts) - counts
        return np.asarray(first + (counts - 1) / 2.0)[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def truncation_section(
    entry: Path,
    version: int,
    splits: Splits,
    near: str,
    specs: list[tuple[str, dict[str, object]]],
    limits: tuple[int, ...] = (64, 128, 256),
) -> list[str]:
    """The same model served with other token limits (`text.max_length` in config.yaml): test
    accuracy and AUROC against the near-OOD set, each detector refitted at that limit."""
    config = (entry / "config.yaml").read_text()
    text = OfflineModel.load(entry, version).config.inputs[0].text
    served_limit = text.max_length if text is not None else None
    if served_limit is None:
        return ["(the model's config names no token limit to vary)"]
    header = ["max_length", "test accuracy", *(label(m, p) for m, p in specs)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with tempfile.TemporaryDirectory() as scratch:
        for limit in limits:
            variant = Path(scratch) / str(limit)
            variant.mkdir()
            (variant / "config.yaml").write_text(
                config.replace(f"max_length: {served_limit}", f"max_length: {limit}", 1)
            )
            (variant / str(version)).symlink_to((entry / str(version)).resolve())
            model = OfflineModel.load(variant, version)
            names = model.config.uncertainty.features
            train = feature_set(model, splits.train, features=names)
            calibration = feature_set(model, splits.calibration, features=names)
            test = feature_set(model, splits.test, features=names)
            ood = feature_set(model, splits.ood[near], labelled=False, features=names)
            cells = []
            for method, params in specs:
                detector = fit_detector(train, calibration, method, params)
                in_scores = detector.score(test.taps, test.logits)
                cells.append(
                    fmt(detection_metrics(in_scores, detector.score(ood.taps, ood.logits)).auroc)
                )
            accuracy = float(np.mean(test.predictions == test.labels))
            mark = " (served)" if limit == served_limit else ""
            rows.append(f"| {limit}{mark} | {accuracy:.4f} | " + " | ".join(cells) + " |")
    return [f"AUROC against `{near}` when texts are cut at other token limits:", "", *rows]


def interval(low_high: tuple[float, float]) -> str:
    return f"[{fmt(low_high[0])}, {fmt(low_high[1])}]"


def selective_section(
    rules: dict[str, Rule],
    test: FeatureSet,
    oods: dict[str, FeatureSet],
) -> list[str]:
    """One row per rule: its admissions on the test split and on each OOD set."""
    columns = ["rule", "admitted share (test) [95% CI]", "admitted accuracy [95% CI]"]
    columns += ["worst class-cond. acc.", *(f"admitted ({n})" for n in oods)]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for rule, (admitted, ood_admitted, predictions) in rules.items():
        m = selective_metrics(admitted, predictions, test.labels)
        n, total = int(admitted.sum()), len(admitted)
        correct = int((predictions[admitted] == test.labels[admitted]).sum())
        share = f"{fmt(m.admitted_fraction)} ({n}) {interval(wilson_interval(n, total))}"
        accuracy = (
            f"{fmt(m.marginal_accuracy)} {interval(wilson_interval(correct, n))}" if n else "–"
        )
        ood_cells = " | ".join(fmt(float(ood_admitted[name].mean())) for name in oods)
        rows.append(
            f"| {rule} | {share} | {accuracy} | {fmt(m.min_class_conditional_accuracy)} "
            f"| {ood_cells} |"
        )
    return rows


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


def selective_rules(
    sdm: SDM,
    served_calibration: str,
    train: FeatureSet,
    calibration: FeatureSet,
    test: FeatureSet,
    oods: dict[str, FeatureSet],
) -> tuple[dict[str, Rule], list[str]]:
    """Every selective rule compared, and notes on them."""
    alpha, tap = sdm.alpha, sdm.tap

    def sdm_admitted(estimator: SDM, logits_of: Callable[[FeatureSet], np.ndarray]) -> Rule:
        def admitted(f: FeatureSet) -> np.ndarray:
            return np.asarray(estimator.evaluate(f.taps, logits_of(f))["sdm_reliable"])

        predictions = np.argmax(logits_of(test), axis=1)
        return admitted(test), {name: admitted(o) for name, o in oods.items()}, predictions

    def softmax_at(t: float) -> Rule:
        def admitted(f: FeatureSet) -> np.ndarray:
            return np.asarray(softmax_rows(f.logits / t).max(axis=1) >= alpha)

        return admitted(test), {name: admitted(o) for name, o in oods.items()}, test.predictions

    labelled = FeatureSet(
        taps={tap: np.vstack([train.taps[tap], calibration.taps[tap]])},
        logits=np.vstack([train.logits, calibration.logits]),
        labels=np.concatenate([train.labels, calibration.labels]),
    )
    cross_fitted = SDM.fit_cross_fitted(labelled, tap, KernelScaledSoftmax(), alpha, sdm.k)
    head = train_sdm_head(
        train.taps[tap],
        train.labels,
        train.num_classes,
        shuffles=3,
        epochs=40,
        learning_rate=2e-2,
        seed=SEED,
    )

    def head_logits(f: FeatureSet) -> np.ndarray:
        return np.asarray(f.taps[tap] @ head.weight.T + head.bias)

    support = FeatureSet(
        taps={tap: train.taps[tap][head.train_indices]},
        logits=head_logits(train)[head.train_indices],
        labels=train.labels[head.train_indices],
    )
    trained = SDM.fit(
        support,
        replace(calibration, logits=head_logits(calibration)),
        tap,
        KernelScaledSoftmax(),
        alpha=alpha,
        k=sdm.k,
    )
    temperature = fit_temperature(calibration.logits, calibration.labels)
    split = SDM.fit(train, calibration, tap, KernelScaledSoftmax(), alpha=alpha, k=sdm.k)
    served = {"split": " **(served)**", "cross_fitted": ""}
    if served_calibration == "cross_fitted":
        served = {"split": "", "cross_fitted": " **(served)**"}
    rules = {
        f"SDM, held-out calibration split (q′_min {split.q_prime_min:.3g}){served['split']}": (
            sdm_admitted(split, lambda f: f.logits)
        ),
        f"SDM cross-fitted over train ∪ calibration (q′_min {cross_fitted.q_prime_min:.3g})"
        f"{served['cross_fitted']}": sdm_admitted(cross_fitted, lambda f: f.logits),
        f"SDM over an SDM-loss head (q′_min {trained.q_prime_min:.3g})": sdm_admitted(
            trained, head_logits
        ),
        f"softmax ≥ {alpha}": softmax_at(1.0),
        f"temperature-scaled softmax ≥ {alpha} (T = {temperature:.2f})": softmax_at(temperature),
    }
    head_accuracy = float(np.mean(np.argmax(head_logits(test), axis=1) == test.labels))
    notes = [
        f"The SDM-loss head (a linear head over `{tap}` trained with the SDM loss, compared, not "
        f"served) has test accuracy {head_accuracy:.4f}; its admissions are scored against its "
        "own predictions."
    ]
    return rules, notes


def word_counts(path: Path, field: str) -> np.ndarray:
    return np.array([len(str(record[field]).split()) for record in read_jsonl(path)])


def evaluate(name: str, entry: Path, splits: Splits, version: int) -> list[str]:
    start = time.perf_counter()
    model = OfflineModel.load(entry, version)
    spec = model.config.uncertainty
    artifacts = entry / str(version) / ARTIFACT_DIR
    served, sdm = ServedOOD.load(artifacts), SDM.load(artifacts)
    names = spec.features
    train = feature_set(model, splits.train, features=names)
    calibration = feature_set(model, splits.calibration, features=names)
    test = feature_set(model, splits.test, features=names)
    oods = {n: feature_set(model, p, labelled=False, features=names) for n, p in splits.ood.items()}
    # The candidates calibration had: the text detectors too, on the background it was given.
    background = json.loads((artifacts / "report.json").read_text()).get("background", [])
    specs = candidates(spec.taps, spec.token_score, test.texts is not None, background)
    detection, _ = detection_section(served, spec.ood_level, train, calibration, test, oods, specs)
    rules, notes = selective_rules(sdm, spec.sdm_calibration, train, calibration, test, oods)
    accuracy = float(np.mean(test.predictions == test.labels))
    selection = served.selection
    lines = [
        f"## {name}",
        "",
        f"Test split: {len(test.labels)} inputs, accuracy {accuracy:.4f}; calibration "
        f"{len(calibration.labels)}, train (support) {len(train.labels)}. Served OOD detectors: "
        + ", ".join(f"{label(m.name, m.detector.params())} ({m.role})" for m in served.members)
        + f", level {spec.ood_level}; chosen by: {selection.get('rule')} (validation sets: "
        f"{', '.join(selection.get('validation_sets', [])) or 'none'}).",
        "",
        "### OOD detection (positive = in-distribution test split)",
        "",
        *detection,
        "",
    ]
    if splits.text is not None:
        near = next(n for n in oods if n.startswith("songs"))
        # The served detector, the baseline, and the last tap's Mahalanobis with and without
        # L2 normalisation (the served one appears once).
        compared_specs: list[tuple[str, dict[str, object]]] = [
            ("msp", {}),
            ("mahalanobis", {"tap": spec.taps[-1], "normalise": False}),
            ("mahalanobis", {"tap": spec.taps[-1], "normalise": True}),
        ]
        semantic = served.mahalanobis
        served_spec = (semantic.name, semantic.detector.params())
        compared = {label(*served_spec) + " **(in set)**": semantic.detector}
        for method, params in compared_specs:
            if (method, params) != served_spec:
                compared[label(method, params)] = fit_detector(train, calibration, method, params)
        lines += [
            "### Length robustness",
            "",
            *length_section(
                compared,
                test,
                word_counts(splits.test, splits.text),
                oods[near],
                word_counts(splits.ood[near], splits.text),
                near,
            ),
            "",
            *truncation_section(entry, version, splits, near, compared_specs),
            "",
        ]
    lines += [
        f"### Selective prediction at α = {sdm.alpha}",
        "",
        *selective_section(rules, test, oods),
        "",
        *notes,
        "",
    ]
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
