"""The default ``fortune-topics`` model: the fortunes corpus + all-MiniLM-L6-v2, end to end.

Usage::

    python -m surety_serving.export.fortune_topics [--out model_repository] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from surety_serving.data.background import prepare_background
from surety_serving.data.doc_text import prepare_doc_text
from surety_serving.data.fortunes import prepare_fortunes
from surety_serving.export.classifier import ExportResult, FineTuning, export_classifier
from surety_serving.uncertainty.calibrate import CalibrationOptions, calibrate_entry, describe

log = logging.getLogger(__name__)

__all__ = ["MODEL_NAME", "build", "build_fortune_topics", "main"]

MODEL_NAME = "fortune-topics"
#: SDM's reliability level, below the default 0.95: with eleven noisy topics and few calibration
#: texts for some of them, 0.95 leaves SDM almost nothing it can vouch for (docs/uncertainty.md).
SDM_ALPHA = 0.9
#: Fortunes are short (90th percentile ~110 tokens): 128 truncates few, and fine-tuning's cost
#: grows with the padded length.
MAX_LENGTH = 128


def build_fortune_topics(
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    encoder_dir: Path | None = None,
    seed: int = 0,
    version: int = 1,
    check_parity: bool = True,
    show_progress: bool = True,
) -> ExportResult:
    """Prepare the corpus (cached), fine-tune and export ``<out_dir>/fortune-topics``.

    ``export.json`` also records where the calibration and OOD sets are, for the calibration
    step that chooses and fits the OOD detector and SDM.
    """
    dataset = prepare_fortunes(data_dir, seed=seed)
    splits = {key: str(path) for key, path in dataset.split_paths().items()}
    # Far-OOD validation text (Debian policy) beside the held-out fortune topics: calibration
    # chooses the served OOD detector on these; the evaluation sets are never among them.
    splits["ood_validation_debian-policy"] = str(prepare_doc_text(seed=seed)["debian-policy"])
    return export_classifier(
        encoder_dir,
        dataset.train,
        dataset.test,
        out_dir,
        MODEL_NAME,
        version=version,
        labels=dataset.labels,
        max_length=MAX_LENGTH,
        fine_tuning=FineTuning(seed=seed),
        check_parity=check_parity,
        show_progress=show_progress,
        extra_metadata={
            "data": {
                "corpus": "Debian fortunes + fortunes-min",
                "seed": seed,
                "splits": splits,
                "counts": dataset.counts,
            },
            "uncertainty": {"alpha": SDM_ALPHA},
        },
    )


def build(entry: Path, progress: bool = True) -> ExportResult:
    """``surety build-defaults``' hook: build the model and move its entry to ``entry``.

    The export writes ``<dir>/fortune-topics`` (the name is recorded in export.json), so it
    runs in a hidden folder beside ``entry`` and the finished entry is renamed into place.
    """
    start = time.perf_counter()
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=entry.parent, prefix=".fortune-topics.") as work:
        result = build_fortune_topics(Path(work), show_progress=progress)
        shutil.rmtree(entry, ignore_errors=True)
        result.model_root.rename(entry)
    log.info(
        "%s: held-out test accuracy %.4f (%d texts, %d topics), built in %.0f s",
        MODEL_NAME,
        result.test_accuracy,
        result.num_test,
        len(result.labels),
        time.perf_counter() - start,
    )
    splits = json.loads((entry / "export.json").read_text())["data"]["splits"]
    options = CalibrationOptions(
        Path(splits["train"]),
        Path(splits["calibration"]),
        ood_validation=tuple(
            Path(path) for key, path in splits.items() if key.startswith("ood_validation_")
        ),
        test=Path(splits["test"]),
        background=(prepare_background()["background"],),
    )
    report = calibrate_entry(entry, result.version, options)
    log.info("%s: calibrated uncertainty (%s)", MODEL_NAME, describe(report))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Build the model and print its metrics and the wall time."""
    parser = argparse.ArgumentParser(description="Build the fortune-topics classifier.")
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--encoder", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)
    from surety_serving.cli import configure_logging

    configure_logging()
    start = time.perf_counter()
    result = build_fortune_topics(
        args.out,
        data_dir=args.data_dir,
        encoder_dir=args.encoder,
        seed=args.seed,
        version=args.version,
    )
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                **result.metadata["metrics"],
                "parity": result.parity_max_error,
                "seconds": {**result.seconds, "build": round(elapsed, 1)},
            },
            indent=2,
        )
    )
    log.info("%s: test accuracy %.4f, built in %.1f s", MODEL_NAME, result.test_accuracy, elapsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
