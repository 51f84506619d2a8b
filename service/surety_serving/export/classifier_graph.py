"""The text classifier's graph: the ONNX export of encoder + pooling + head (softmax on
``ai.surety::TwoPassSoftmax``), the checks of its shape, and its parity with torch.
docs/models.md lists the graph's inputs and outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from surety_serving.export.common import (
    ONNX_OPSET,
    ExportError,
    check_graph_io,
    ort_session,
    stamp_metadata,
)
from surety_serving.export.encoder import (
    EncodedBatch,
    TokenGaussian,
    build_pooled_classifier,
    load_encoder,
)
from surety_serving.models.quiet_export import quiet_exporter

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "MODEL_INPUTS",
    "PARITY_TOLERANCE",
    "SCALE_INPUT",
    "SOFTMAX_OP",
    "TOKEN_OUTPUT",
    "export_onnx",
    "feeds",
    "finish_graph",
    "parity",
    "sample_feeds",
]

SOFTMAX_OP = "TwoPassSoftmax"
#: |ONNX − torch| / max(1, |torch|) over every output (see :func:`parity`).
PARITY_TOLERANCE = 1e-4
SCALE_INPUT = "scale"
TOKEN_OUTPUT = "token_mahalanobis"
MODEL_INPUTS = ("input_ids", "attention_mask", SCALE_INPUT)


def feeds(batch: EncodedBatch, scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The graph's feeds for a tokenized batch (``scale`` None: 1 for every row)."""
    rows = batch.input_ids.shape[0]
    return {
        "input_ids": batch.input_ids.numpy(),
        "attention_mask": batch.attention_mask.numpy(),
        SCALE_INPUT: np.ones((rows, 1), dtype=np.float32) if scale is None else scale,
    }


def sample_feeds(
    tokenizer: Tokenizer, batches: Sequence[Sequence[str]]
) -> list[dict[str, np.ndarray]]:
    """The feeds of each batch of texts (scale 1): what a graph rewrite is checked on."""
    return [feeds(EncodedBatch.encode(tokenizer, texts)) for texts in batches]


def export_onnx(
    model: torch.nn.Module, example: EncodedBatch, path: Path, output_names: Sequence[str]
) -> None:
    import torch

    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    scale = torch.ones(example.input_ids.shape[0], 1)
    with quiet_exporter():
        torch.onnx.export(
            model,
            (example.input_ids, example.attention_mask, scale),
            str(path),
            dynamo=True,
            input_names=list(MODEL_INPUTS),
            output_names=list(output_names),
            dynamic_shapes={
                "input_ids": {0: batch, 1: sequence},
                "attention_mask": {0: batch, 1: sequence},
                "scale": {0: batch},
            },
            opset_version=ONNX_OPSET,
            external_data=False,
            verbose=False,
        )


def finish_graph(path: Path, output_names: Sequence[str], metadata: dict[str, str]) -> None:
    """Check the exported graph has the custom softmax and the outputs; stamp metadata."""
    import onnx

    from surety_serving import kernels

    model = onnx.load(str(path))
    custom = [n for n in model.graph.node if n.domain == kernels.DOMAIN]
    if [n.op_type for n in custom] != [SOFTMAX_OP]:
        raise ExportError(f"expected one {kernels.DOMAIN}::{SOFTMAX_OP} node, got {custom}")
    if custom[0].output[0] != "probabilities":
        raise ExportError(f"{SOFTMAX_OP} feeds {custom[0].output[0]!r}, not 'probabilities'")
    if list(custom[0].input)[1:] != [SCALE_INPUT]:
        raise ExportError(f"{SOFTMAX_OP} takes {list(custom[0].input)}, not [logits, scale]")
    check_graph_io(model, MODEL_INPUTS, output_names)
    names = [o.name for o in model.graph.output]
    token = model.graph.output[names.index(TOKEN_OUTPUT)].type.tensor_type
    if token.elem_type != onnx.TensorProto.FLOAT or len(token.shape.dim) != 1:
        raise ExportError(f"{TOKEN_OUTPUT} is not a float32 vector [B]: {token}")
    domains = {o.domain: o.version for o in model.opset_import}
    if domains.get(kernels.DOMAIN) != kernels.OPSET_VERSION:
        raise ExportError(f"opset import for {kernels.DOMAIN} is {domains.get(kernels.DOMAIN)}")
    stamp_metadata(model, metadata)
    onnx.save(model, str(path))


def parity(
    encoder_dir: Path,
    encoder_state: dict[str, torch.Tensor],
    head_state: dict[str, torch.Tensor],
    token_gaussian: TokenGaussian,
    model_path: Path,
    tokenizer: Tokenizer,
    batches: Sequence[Sequence[str]],
    output_names: Sequence[str],
) -> float:
    """Max error |ONNX − torch| / max(1, |torch|) over all outputs and batches, each at scale 1
    and 0.5: absolute for values up to 1 (probabilities, logits, pooled states), relative above
    (``token_mahalanobis`` is in the hundreds, where float32 resolves ~1e-5 at best).

    The torch side is a fresh instance (encoder reloaded with the trained weights, head copied)
    run under no_grad: a module that has been through ``torch.onnx.export`` is not a trustworthy
    reference.
    """
    import torch

    encoder = load_encoder(encoder_dir)
    encoder.load_state_dict(encoder_state)
    num_classes, hidden_size = head_state["weight"].shape
    head = torch.nn.Linear(int(hidden_size), int(num_classes))
    head.load_state_dict(head_state)
    reference = build_pooled_classifier(encoder, head.eval(), token_gaussian=token_gaussian)
    session = ort_session(model_path)
    worst = 0.0
    for texts, factor in ((t, f) for t in batches for f in (1.0, 0.5)):
        batch = EncodedBatch.encode(tokenizer, texts)
        scale = torch.full((len(texts), 1), factor)
        with torch.no_grad():
            expected = reference(batch.input_ids, batch.attention_mask, scale)
        actual = session.run(list(output_names), feeds(batch, scale.numpy()))
        for name, got, want in zip(output_names, actual, expected, strict=True):
            if got.shape != tuple(want.shape):
                raise ExportError(f"{name}: ONNX shape {got.shape} != torch {tuple(want.shape)}")
            want_array = want.numpy()
            error = np.abs(got - want_array) / np.maximum(1.0, np.abs(want_array))
            worst = max(worst, float(np.max(error)))
    return worst
