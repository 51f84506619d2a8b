"""What a text classifier's export records: export.json (:func:`export_record`) and the
config.yaml the server reads, written from it (:func:`repository_config`). docs/models.md lists
export.json's fields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surety_serving.export.classifier_graph import SCALE_INPUT, SOFTMAX_OP, TOKEN_OUTPUT
from surety_serving.export.common import (
    EXPORT_FORMAT,
    LABELS_FILE,
    MODEL_FILE,
    ONNX_OPSET,
    TEXT_BATCHING,
    TOKENIZER_FILE,
    sha256_file,
    write_config,
)

__all__ = ["ExportedGraph", "export_record", "repository_config", "write_repository_config"]


@dataclass(frozen=True)
class ExportedGraph:
    """The written graph and what export.json says about its shape."""

    model_path: Path
    tokenizer_path: Path
    labels: tuple[str, ...]
    taps: tuple[str, ...]
    hidden_size: int
    max_length: int
    token_density: dict[str, Any]


def export_record(
    name: str,
    version: int,
    graph: ExportedGraph,
    *,
    encoder: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    parity: float | None,
    parity_tolerance: float,
    seconds: dict[str, float],
    optimized: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """export.json: the entry's interface (inputs, outputs, feeds, labels, taps), its files'
    digests, the softmax op, and how it was trained, checked and rewritten. ``extra`` is merged
    in last (e.g. where the calibration and OOD sets are)."""
    from surety_serving import kernels

    num_classes = len(graph.labels)
    hidden = graph.hidden_size
    record: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "name": name,
        "version": version,
        "task": "classifier",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, num_classes]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
            *({"name": tap, "datatype": "FP32", "shape": [-1, hidden]} for tap in graph.taps),
            {"name": TOKEN_OUTPUT, "datatype": "FP32", "shape": [-1]},
        ],
        "model_inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
            {"name": SCALE_INPUT, "datatype": "FP32", "shape": [-1, 1]},
        ],
        "labels": list(graph.labels),
        "labels_file": LABELS_FILE,
        "taps": [
            {
                "name": tap,
                "layer": "embeddings" if i == 0 else f"layer_{i}",
                "dim": hidden,
                "pooling": "mean",
            }
            for i, tap in enumerate(graph.taps)
        ],
        "token_density": graph.token_density,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "max_length": graph.max_length,
            "truncation": True,
            "padding": "longest",
        },
        "files": {
            MODEL_FILE: sha256_file(graph.model_path),
            TOKENIZER_FILE: sha256_file(graph.tokenizer_path),
        },
        "softmax": {
            "op": f"{kernels.DOMAIN}::{SOFTMAX_OP}",
            "opset": kernels.OPSET_VERSION,
            "output": "probabilities",
            "scale_input": SCALE_INPUT,
        },
        "onnx_opset": ONNX_OPSET,
        "encoder": encoder,
        "training": training,
        "metrics": metrics,
        "parity": {
            "max_error": parity,
            "error": "|onnx - torch| / max(1, |torch|)",
            "tolerance": parity_tolerance,
        },
        "seconds": seconds,
    }
    if optimized is not None:
        record["optimize"] = optimized
    if extra:
        record.update(extra)
    return record


def repository_config(metadata: dict[str, Any]) -> dict[str, Any]:
    """The entry's config.yaml, from its export.json (see docs/operations.md for every field).

    Laid out like digits' config: the request takes ``text`` (BYTES [B]) through the ``text``
    decoder, which tokenizes with the version's tokenizer.json into the graph's int64 feeds.
    """
    metrics = metadata.get("metrics", {})
    encoder = metadata["encoder"]
    taps = [tap["name"] for tap in metadata["taps"]]
    # Entries exported before fine-tuning and the token density have neither record.
    tuned = metadata.get("training", {}).get("encoder", "frozen")
    token = metadata.get("token_density")
    return {
        "task": "classifier",
        "description": (
            f"{encoder['model_type']} encoder ({encoder['num_layers']} layers, {tuned}) + "
            f"linear head; held-out test accuracy "
            f"{metrics.get('test_accuracy', float('nan')):.4f}"
        ),
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [-1],
                "decoder": "text",
                "text": {
                    "tokenizer": metadata["tokenizer"]["file"],
                    "max_length": metadata["tokenizer"]["max_length"],
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                },
            }
        ],
        "outputs": metadata["outputs"],
        "labels": metadata["labels"],
        "classifier": {
            "probabilities": metadata["softmax"]["output"],
            "scale_input": metadata["softmax"]["scale_input"],
        },
        "batching": dict(TEXT_BATCHING),
        "uncertainty": {
            "taps": taps,
            "logits": "logits",
            "sdm_tap": taps[-1],
            **({"token_score": token["output"]} if token else {}),
            # Per-model uncertainty settings given at export (e.g. SDM's alpha).
            **metadata.get("uncertainty", {}),
        },
        **({"optimize": metadata["optimize"]["options"]} if "optimize" in metadata else {}),
    }


def write_repository_config(model_root: Path, metadata: dict[str, Any]) -> Path:
    """Validate (as the server will) and write ``<model_root>/config.yaml``."""
    return write_config(model_root, repository_config(metadata))
