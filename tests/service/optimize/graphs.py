"""Models for the optimize tests: hand-made graphs, a tiny BERT exported as the project exports
encoders, and onnx's reference evaluator with the ai.surety ops backed by kernels.reference
(a second check of a rewrite, against the float64 twins rather than the native ops)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from surety_serving import kernels
from surety_serving.kernels import reference
from surety_serving.optimize.options import SparseOptions

OPSET = 18
# ONNX Runtime 1.21 (the oldest the kernels support) reads IR version 10.
IR_VERSION = 10
HEADS, HEAD_SIZE, VOCAB = 4, 16, 100
SPARSE_ATTRIBUTES = ("num_heads", "scale", "causal", *SparseOptions().attributes())


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray] | None = None,
    domains: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "test",
        list(inputs),
        list(outputs),
        [numpy_helper.from_array(value, name) for name, value in (initializers or {}).items()],
    )
    opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, v) for d, v in domains)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def floats(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def node_of(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    (node,) = (n for n in model.graph.node if n.op_type == op_type)
    return node


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = (t for t in model.graph.initializer if t.name == name)
    return numpy_helper.to_array(tensor)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    session = ort.InferenceSession(model.SerializeToString(), options)
    return [np.asarray(value) for value in session.run(None, feeds)]


# onnx.reference finds an op by the class name.
class SparseAttention(OpRun):
    op_domain = kernels.DOMAIN

    def _run(self, q, k, v, key_padding_mask=None, **_):
        attributes = {name: getattr(self, name) for name in SPARSE_ATTRIBUTES}
        y = reference.sparse_attention(q, k, v, key_padding_mask=key_padding_mask, **attributes)[0]
        return (y.astype(np.float32),)


class TwoPassSoftmax(OpRun):
    op_domain = kernels.DOMAIN

    def _run(self, x, scale=None, mask=None, **_):
        return (reference.two_pass_softmax(x, scale, mask)[0].astype(np.float32),)


class GatherElements(OpRun):
    # onnx 1.23's own GatherElements fails on the exporter's position-id lookup.
    op_domain = ""

    def _run(self, data, indices, axis=0):
        return (np.take_along_axis(data, indices, axis=axis),)


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``model`` run by onnx's reference evaluator, the ai.surety ops by kernels.reference."""
    evaluator = ReferenceEvaluator(model, new_ops=[SparseAttention, TwoPassSoftmax, GatherElements])
    return [np.asarray(value) for value in evaluator.run(None, feeds)]


def export_bert(path: str) -> onnx.ModelProto:
    """A 2-layer BERT (hidden 64, 4 heads) with random weights, exported as the project exports
    encoders (dynamo, opset 18, SDPA attention): inputs input_ids and attention_mask [B, S],
    outputs last_hidden_state and pooler_output."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=HEADS * HEAD_SIZE,
        num_attention_heads=HEADS,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=VOCAB,
    )
    # SDPA attention, transformers' default, as surety_serving.export.encoder.load_encoder asks for.
    bert: Any = BertModel(config)
    bert.eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            output = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return output.last_hidden_state, output.pooler_output

    ids = torch.randint(0, config.vocab_size, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.int64)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(),
            (ids, mask),
            path,
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_shapes={
                "input_ids": {0: batch, 1: sequence},
                "attention_mask": {0: batch, 1: sequence},
            },
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    return onnx.load(path)
