"""The pass on exported text classifiers (the tiny one the serving tests share): the softmax
rewrite keeps every output within 1e-4, and an export asked for sparse attention applies and
records it."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from surety_serving.export.classifier import (
    ExportResult,
    FineTuning,
    TrainingConfig,
    export_classifier,
)
from surety_serving.optimize.options import OptimizeOptions
from surety_serving.optimize.pipeline import optimize_file
from surety_serving.runtime.config import load_config
from tests.service.optimize.graphs import ops

pytestmark = pytest.mark.model


@pytest.mark.slow  # the tiny export, when no other test built it
def test_softmax_pass_keeps_the_classifier_within_tolerance(
    text_export: ExportResult, tmp_path: Path
) -> None:
    target = tmp_path / "model.onnx"
    report = optimize_file(text_export.model_path, target, OptimizeOptions(tolerance=1e-4))
    layers = text_export.metadata["encoder"]["num_layers"]
    assert [c.kind for c in report.replaced] == ["softmax"] * layers
    assert set(report.drift) >= {"logits", "probabilities", "token_mahalanobis"}
    assert report.max_drift <= 1e-4
    # The head's TwoPassSoftmax from the export, and one per layer.
    assert ops(onnx.load(str(target))).count("TwoPassSoftmax") == layers + 1


@pytest.mark.slow  # a second tiny export
def test_export_applies_and_records_the_attention_rewrite(
    text_export: ExportResult, tmp_path: Path
) -> None:
    training = text_export.metadata["training"]
    options = OptimizeOptions(attention="sparse", softmax=False)
    result = export_classifier(
        None,
        Path(training["train_file"]),
        Path(training["test_file"]),
        tmp_path,
        "sparse-topics",
        labels=text_export.labels,
        max_length=text_export.max_length,
        fine_tuning=FineTuning(layers=0),
        training=TrainingConfig(epochs=20),
        check_parity=False,
        optimize=options,
        show_progress=False,
    )
    layers = text_export.metadata["encoder"]["num_layers"]
    assert ops(onnx.load(str(result.model_path))).count("SparseAttention") == layers
    record = result.metadata["optimize"]
    assert [c["kind"] for c in record["replaced"]] == ["attention"] * layers
    assert max(record["drift"].values()) <= options.tolerance
    config = load_config(result.model_root / "config.yaml")
    assert config.optimize == options.record()
