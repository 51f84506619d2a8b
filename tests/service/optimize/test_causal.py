"""Causal attention → SparseAttention(causal=1): a decoder's additive mask, built in the graph as
causal And key padding (the judge's form, and the same mask written other ways), is split into
the causal flag and the key-padding row; a mask part computed from shapes alone that is not the
causal pattern is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surety_serving.optimize.options import OptimizeOptions, SparseOptions
from surety_serving.optimize.pipeline import optimize, rewrite
from tests.service.optimize.graphs import floats, make_model, node_of, ops, run_ort, scalar

pytestmark = pytest.mark.unit

HEADS, SIZE, VALUE_SIZE = 2, 4, 3
DENSE = OptimizeOptions(attention="sparse", sparse=SparseOptions(pattern="dense"), softmax=False)
LOWEST = float(np.finfo(np.float32).min)


def _positions(kind: str) -> list[onnx.NodeProto]:
    """``idx`` [S]: increasing positions from the mask's length alone (its shape, never its
    values): a cumsum of ones, as the judge writes it, or a Range."""
    nodes = [helper.make_node("Shape", ["attention_mask"], ["shape"], start=1, end=2)]
    if kind == "cumsum":
        one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
        return [
            *nodes,
            helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=one),
            helper.make_node("CumSum", ["ones", "start"], ["idx"]),  # along axis 0,
        ]
    return [
        *nodes,
        helper.make_node("Squeeze", ["shape"], ["length"]),
        helper.make_node("Range", ["start", "length", "step"], ["idx"]),
    ]


def causal_attention(
    form: str = "product", positions: str = "cumsum", compare: str = "LessOrEqual"
) -> onnx.ModelProto:
    """Eager attention whose additive mask is built from ``attention_mask`` [B, S] like the
    judge's: allowed = (key j ≤ query i) ∧ key j not padding; ``form`` turns it additive as
    ``Cast(¬allowed) · lowest`` (product), ``Where(allowed, 0, lowest)`` (where) or
    ``Cast(¬causal ∨ ¬padding) · lowest`` (or). ``compare`` GreaterOrEqual gives the
    anti-causal pattern j ≥ i instead."""
    nodes = [
        *_positions(positions),
        helper.make_node("Unsqueeze", ["idx", "axis0"], ["keys_row"]),  # [1, S]: key j
        helper.make_node("Unsqueeze", ["idx", "axis1"], ["queries_col"]),  # [S, 1]: query i
        helper.make_node(compare, ["keys_row", "queries_col"], ["causal2"]),
        helper.make_node("Unsqueeze", ["causal2", "axes01"], ["causal"]),  # [1, 1, S, S]
        helper.make_node("Cast", ["attention_mask"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["keep", "axes12"], ["padding"]),  # [B, 1, 1, S]
    ]
    if form == "or":
        nodes += [
            helper.make_node("Not", ["causal"], ["not_causal"]),
            helper.make_node("Not", ["padding"], ["not_padding"]),
            helper.make_node("Or", ["not_causal", "not_padding"], ["excluded"]),
        ]
    else:
        nodes.append(helper.make_node("And", ["causal", "padding"], ["allowed"]))
        if form == "product":
            nodes.append(helper.make_node("Not", ["allowed"], ["excluded"]))
    if form == "where":
        nodes.append(helper.make_node("Where", ["allowed", "zero", "lowest"], ["mask"]))
    else:
        nodes += [
            helper.make_node("Cast", ["excluded"], ["excluded_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["excluded_f", "lowest"], ["mask"], name="fill"),
        ]
    nodes += [
        helper.make_node("MatMul", ["qh", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="add_mask"),
        helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["y"], name="pv"),
    ]
    inputs = [
        floats("qh", ["batch", HEADS, "tokens", SIZE]),
        floats("kt", ["batch", HEADS, SIZE, "tokens"]),
        floats("vh", ["batch", HEADS, "tokens", VALUE_SIZE]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
    ]
    constants = {
        "axis0": np.array([0], np.int64),
        "axis1": np.array([1], np.int64),
        "axes01": np.array([0, 1], np.int64),
        "axes12": np.array([1, 2], np.int64),
        "start": np.array(0, np.int64),
        "step": np.array(1, np.int64),
        "zero": scalar(0.0),
        "lowest": scalar(LOWEST),
        "scale": scalar(0.5),
    }
    output = floats("y", ["batch", HEADS, "tokens", VALUE_SIZE])
    return make_model(nodes, inputs, [output], constants)


def left_padded(tokens: int = 7) -> dict[str, np.ndarray]:
    """Three rows, the second left-padded by 3 and the third by 1, as the judge pads."""
    rng = np.random.default_rng(0)
    mask = np.ones((3, tokens), np.int64)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return {
        "qh": rng.standard_normal((3, HEADS, tokens, SIZE)).astype(np.float32),
        "kt": rng.standard_normal((3, HEADS, SIZE, tokens)).astype(np.float32),
        "vh": rng.standard_normal((3, HEADS, tokens, VALUE_SIZE)).astype(np.float32),
        "attention_mask": mask,
    }


def attention_written_out(feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Causal attention over the kept keys in float64, 0 for a query with no key to see."""
    q, kt, v = (feeds[n].astype(np.float64) for n in ("qh", "kt", "vh"))
    tokens = q.shape[2]
    allowed = np.tri(tokens, dtype=bool) & feeds["attention_mask"].astype(bool)[:, None, None, :]
    scores = np.where(allowed, 0.5 * q @ kt, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    weights = np.where(allowed, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)
    total = weights.sum(axis=-1, keepdims=True)
    return np.asarray((weights / np.where(total > 0, total, 1)) @ v)


@pytest.mark.parametrize(
    ("form", "positions"), [("product", "cumsum"), ("where", "cumsum"), ("or", "range")]
)
def test_a_causal_padding_mask_becomes_causal_sparse_attention(form: str, positions: str) -> None:
    model = causal_attention(form, positions)
    rewritten, report = rewrite(model, DENSE)
    assert [c.kind for c in report.replaced] == ["attention"]
    assert "causal from" in report.replaced[0].detail
    assert "key padding from 'padding'" in report.replaced[0].detail
    attention = node_of(rewritten, "SparseAttention")
    attributes = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    assert (attributes["causal"], attributes["num_heads"], attributes["scale"]) == (1, 2, 0.5)
    assert len(attention.input) == 4  # the key-padding row
    # What only built the causal part is gone: the op applies it itself.
    assert not {"CumSum", "Range", "LessOrEqual", "Softmax"} & set(ops(rewritten))
    feeds = left_padded()
    got, want = run_ort(rewritten, feeds)[0], attention_written_out(feeds)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_queries_that_see_keys_match_the_dense_graph() -> None:
    """Against the original graph: equal wherever a query sees a key. A left-padding query sees
    none: the dense graph spreads it over every key (its row is all `lowest`), the op gives 0;
    a decoder reads neither."""
    model = causal_attention()
    rewritten, _ = rewrite(model, DENSE)
    feeds = left_padded()
    got, want = run_ort(rewritten, feeds)[0], run_ort(model, feeds)[0]
    sees = feeds["attention_mask"].astype(bool)[:, None, :, None]  # left padding: query i real
    np.testing.assert_allclose(np.where(sees, got, 0), np.where(sees, want, 0), atol=1e-5)
    assert np.abs(got[1, :, :3]).max() == 0 and np.abs(want[1, :, :3]).max() > 0


def test_the_drift_check_passes_on_every_query_seeing_a_key() -> None:
    """The default samples pad at the end, so every query sees key 0: dense and sparse agree."""
    _, report = optimize(causal_attention(), DENSE)
    assert report.replaced and max(report.drift.values()) <= 1e-5


def test_an_anti_causal_pattern_is_refused_with_the_reason() -> None:
    _, report = rewrite(causal_attention(compare="GreaterOrEqual"), DENSE)
    assert report.replaced == []
    assert "is not the causal pattern (key j ≤ query i)" in report.skipped[0].detail


def test_a_causal_part_fed_at_run_time_is_not_taken_for_causal() -> None:
    """A per-query mask that is a graph input depends on its values, not on shapes: it is not
    trusted to be causal (the key-padding path takes it, and the drift check judges)."""
    model = causal_attention()
    graph = model.graph
    (causal,) = (n for n in graph.node if n.output[0] == "causal")
    graph.node.remove(causal)
    graph.input.append(
        helper.make_tensor_value_info("causal", TensorProto.BOOL, [1, 1, "tokens", "tokens"])
    )
    rewritten, report = rewrite(model, DENSE)
    assert "key padding from mask 'mask'" in report.replaced[0].detail
    attention = node_of(rewritten, "SparseAttention")
    assert {a.name: a.i for a in attention.attribute}["causal"] == 0
