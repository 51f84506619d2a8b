"""Attention → SparseAttention, and the softmax pass on the same exported encoder: a tiny BERT
exported with the dynamo exporter, and hand-made attention graphs (eager-style, fused MHA)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surety_serving.optimize.options import DriftError, OptimizeOptions, SparseOptions
from surety_serving.optimize.pipeline import optimize, optimize_file, rewrite
from surety_serving.optimize.verify import sample_inputs
from tests.service.optimize.graphs import (
    HEAD_SIZE,
    HEADS,
    VOCAB,
    export_bert,
    floats,
    make_model,
    node_of,
    ops,
    run_ort,
    run_reference,
    scalar,
)
from tests.tiers import model_fixture

pytestmark = pytest.mark.model

LAYERS = 2
DENSE = OptimizeOptions(attention="sparse", sparse=SparseOptions(pattern="dense"))


@model_fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    return export_bert(str(tmp_path_factory.mktemp("bert") / "bert.onnx"))


def bert_samples() -> list[dict[str, np.ndarray]]:
    """Two batches of other sizes than the check's default: 3 rows of 11 tokens (the last
    padded after 7), and 1 row of 5."""
    ids = np.random.default_rng(1).integers(0, VOCAB, (3, 11))
    mask = np.ones((3, 11), dtype=np.int64)
    mask[2, 7:] = 0
    return [
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": ids[:1, :5], "attention_mask": mask[:1, :5]},
    ]


def test_sample_inputs_size_each_unnamed_dimension_apart() -> None:
    """Named dimensions share one size; unnamed ones get the batch size on axis 0 and the
    sequence size elsewhere, each on its own."""
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, None]),
            floats("b", ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    feeds = sample_inputs(model)
    assert feeds["a"].shape == (2, 16)
    assert feeds["b"].shape == (2, 16)


def test_sample_inputs_index_the_embeddings_and_pad(bert: onnx.ModelProto) -> None:
    feeds = sample_inputs(bert)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == (2, 16)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < VOCAB
    assert feeds["input_ids"].max() > 0  # from the table's rows, not zeros
    np.testing.assert_array_equal(feeds["attention_mask"].sum(axis=1), [16, 12])


def test_softmax_only_replaces_every_softmax(bert: onnx.ModelProto) -> None:
    samples = [sample_inputs(bert), *bert_samples()]
    rewritten, report = optimize(bert, OptimizeOptions(tolerance=1e-5), samples=samples)
    assert "Softmax" not in ops(rewritten)
    assert ops(rewritten).count("TwoPassSoftmax") == LAYERS
    assert [c.kind for c in report.replaced] == ["softmax"] * LAYERS
    assert set(report.drift) == {"last_hidden_state", "pooler_output"}
    assert max(report.drift.values()) <= 1e-5


def test_drift_past_the_tolerance_writes_nothing(bert: onnx.ModelProto, tmp_path: Path) -> None:
    source, target = tmp_path / "bert.onnx", tmp_path / "out.onnx"
    onnx.save(bert, str(source))
    with pytest.raises(DriftError) as raised:
        optimize_file(source, target, OptimizeOptions(tolerance=0.0))
    assert not target.exists()
    assert max(raised.value.report.drift.values()) > 0


def test_sparse_rewrite_matches_the_reference_twin(bert: onnx.ModelProto) -> None:
    """The rewritten graph, its SparseAttention run by kernels.reference, against the original
    in onnxruntime: checks the transposes, reshapes, scale and key padding without the op."""
    rewritten, report = rewrite(bert, DENSE)
    assert [c.kind for c in report.replaced] == ["attention"] * LAYERS
    assert "Softmax" not in ops(rewritten) and "IsNaN" not in ops(rewritten)
    attention = [n for n in rewritten.graph.node if n.op_type == "SparseAttention"]
    assert len(attention) == LAYERS
    attributes = {a.name: helper.get_attribute_value(a) for a in attention[0].attribute}
    assert attributes["num_heads"] == HEADS
    assert attributes["scale"] == pytest.approx(1 / math.sqrt(HEAD_SIZE))
    assert (attributes["pattern"], attributes["estimator"]) == (b"dense", b"none")
    assert len(attention[0].input) == 4  # the key padding mask from the exporter's Where
    for feeds in bert_samples():
        for want, got in zip(run_ort(bert, feeds), run_reference(rewritten, feeds), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_sparse_dense_matches_the_original(bert: onnx.ModelProto) -> None:
    rewritten, report = optimize(bert, DENSE, samples=bert_samples())
    assert ops(rewritten).count("SparseAttention") == LAYERS
    assert max(report.drift.values()) <= 1e-4


def test_a_band_too_narrow_is_refused(bert: onnx.ModelProto, tmp_path: Path) -> None:
    source, target = tmp_path / "bert.onnx", tmp_path / "out.onnx"
    onnx.save(bert, str(source))
    band = SparseOptions(pattern="band", density=0.05)
    with pytest.raises(DriftError):
        optimize_file(
            source, target, OptimizeOptions(attention="sparse", sparse=band, tolerance=1e-6)
        )
    assert not target.exists()


def eager_attention(
    mask_shape: tuple[int | str, ...] = ("batch", 1, 1, "keys"), heads: int | str = 2
) -> onnx.ModelProto:
    """HF eager-style attention: Softmax(MatMul(Qh, Kt) / √d + mask) @ Vh, d = 4, dv = 3."""
    nodes = [
        helper.make_node("MatMul", ["qh", "kt"], ["scores"], name="qk"),
        helper.make_node("Div", ["scores", "root"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="add_mask"),
        helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["y"], name="pv"),
    ]
    inputs = [
        floats("qh", ["batch", heads, "queries", 4]),
        floats("kt", ["batch", heads, 4, "keys"]),
        floats("vh", ["batch", heads, "keys", 3]),
        floats("mask", list(mask_shape)),
    ]
    return make_model(
        nodes, inputs, [floats("y", ["batch", heads, "queries", 3])], {"root": scalar(2.0)}
    )


def eager_feeds(queries: int = 6, keys: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {
        "qh": rng.standard_normal((2, 2, queries, 4)),
        "kt": rng.standard_normal((2, 2, 4, keys)),
        "vh": rng.standard_normal((2, 2, keys, 3)),
        "mask": np.zeros((2, 1, 1, keys)),
    }
    feeds["mask"][1, ..., keys - 2 :] = np.finfo(np.float32).min
    return {name: value.astype(np.float32) for name, value in feeds.items()}


def test_an_eager_float_mask_becomes_key_padding() -> None:
    model = eager_attention()
    rewritten, report = rewrite(model, DENSE)
    assert "Greater" in ops(rewritten) and "Softmax" not in ops(rewritten)
    attributes = {
        a.name: helper.get_attribute_value(a)
        for a in node_of(rewritten, "SparseAttention").attribute
    }
    assert (attributes["num_heads"], attributes["scale"]) == (2, 0.5)
    assert "key padding from mask 'mask' > -10000" in report.replaced[0].detail
    feeds = eager_feeds()
    np.testing.assert_allclose(
        run_reference(rewritten, feeds)[0], run_ort(model, feeds)[0], atol=1e-5
    )


def test_symbolic_heads_are_skipped_with_the_reason() -> None:
    model = eager_attention(heads="heads")
    _, report = rewrite(model, OptimizeOptions(attention="sparse", softmax=False))
    assert report.replaced == []
    assert "heads and head sizes are not static" in report.skipped[0].detail


def test_a_mask_without_a_batch_axis_is_skipped() -> None:
    _, report = rewrite(eager_attention(mask_shape=(1, 1, 6, 6)), DENSE)
    assert report.replaced[0].kind == "softmax"  # the softmax rewrite took it instead
    assert "the additive mask has shape [1, 1, 6, 6], not [B, 1|H, S|1, T]" in (
        report.skipped[0].detail
    )


def test_a_mask_differing_between_queries_is_refused() -> None:
    """A causal mask fed as [B, 1, S, T] is taken for a key-padding mask (its first query row):
    the drift check refuses the result."""
    causal = np.triu(np.full((6, 6), np.finfo(np.float32).min, dtype=np.float32), k=1)
    model = eager_attention(mask_shape=("batch", 1, "queries", "keys"))
    feeds = {**eager_feeds(), "mask": np.broadcast_to(causal, (2, 1, 6, 6)).copy()}
    with pytest.raises(DriftError):
        optimize(model, DENSE, samples=[feeds])


def multi_head_attention() -> onnx.ModelProto:
    """com.microsoft.MultiHeadAttention, 2 heads: q, k [B, S|T, 8], v [B, T, 6], key padding."""
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", "keep"],
        ["y"],
        name="mha",
        domain="com.microsoft",
        num_heads=2,
    )
    inputs = [
        floats("q", ["batch", "queries", 8]),
        floats("k", ["batch", "keys", 8]),
        floats("v", ["batch", "keys", 6]),
        helper.make_tensor_value_info("keep", TensorProto.INT32, ["batch", "keys"]),
    ]
    return make_model(
        [node], inputs, [floats("y", ["batch", "queries", 6])], domains=[("com.microsoft", 1)]
    )


def mha_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    keep = np.ones((2, 7), dtype=np.int32)
    keep[1, 5:] = 0
    shapes = {"q": (2, 5, 8), "k": (2, 7, 8), "v": (2, 7, 6)}
    return {
        **{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()},
        "keep": keep,
    }


def test_multi_head_attention_becomes_sparse_attention() -> None:
    model = multi_head_attention()
    rewritten, report = rewrite(model, DENSE)
    assert ops(rewritten) == ["Cast", "SparseAttention"]
    assert [(c.node, c.kind) for c in report.replaced] == [("mha", "multi_head_attention")]
    feeds = mha_feeds()
    np.testing.assert_allclose(
        run_reference(rewritten, feeds)[0], run_ort(model, feeds)[0], atol=1e-5
    )
    optimize(model, DENSE, samples=[feeds])
