"""The tiny text classifier shared by the export and text-serving tests: a few short fortunes
per topic, exported once per session, never the full fortune-topics model."""

from __future__ import annotations

import json
from pathlib import Path

from surety_serving.data.fortunes import Example, prepare_fortunes, read_jsonl, write_jsonl
from surety_serving.export.classifier import (
    ExportResult,
    FineTuning,
    TrainingConfig,
    export_classifier,
)

NAME = "tiny-topics"
VERSION = 3
TRAIN_PER_TOPIC = 10
TEST_PER_TOPIC = 4
MAX_LENGTH = 64
# Short texts keep the embedding pass of this small build to a few seconds on two cores.
MAX_CHARS = 160


def subset(examples: list[Example], per_label: int) -> list[Example]:
    """The first ``per_label`` short examples of each label."""
    chosen: dict[str, list[Example]] = {}
    for example in examples:
        if len(example.text) <= MAX_CHARS and len(chosen.setdefault(example.label, [])) < per_label:
            chosen[example.label].append(example)
    return [e for group in chosen.values() for e in group]


def build(work: Path) -> ExportResult:
    """Export the tiny model into ``work/repo/tiny-topics`` (a servable repository)."""
    dataset = prepare_fortunes(seed=0)
    train, test = work / "train.jsonl", work / "test.jsonl"
    write_jsonl(train, subset(read_jsonl(dataset.train), TRAIN_PER_TOPIC))
    write_jsonl(test, subset(read_jsonl(dataset.test), TEST_PER_TOPIC))
    return export_classifier(
        None,
        train,
        test,
        work / "repo",
        NAME,
        version=VERSION,
        labels=dataset.labels,
        max_length=MAX_LENGTH,
        # A frozen encoder: the tiny serving tests need a quick, decent model, not a tuned one.
        fine_tuning=FineTuning(layers=0),
        training=TrainingConfig(epochs=200),
        show_progress=False,
    )


def test_examples(result: ExportResult) -> list[Example]:
    """The test split the export measured its accuracy on."""
    return read_jsonl(Path(result.metadata["training"]["test_file"]))


def text_request(texts: list[str], **extra: object) -> dict[str, object]:
    """A JSON OIP request for a text model."""
    return {
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
        **extra,
    }


def binary_text_request(elements: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The binary tensor extension: raw BYTES elements (4-byte length + bytes), any bytes."""
    blob = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(elements)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + blob, headers
