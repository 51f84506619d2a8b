"""Softmax → TwoPassSoftmax on hand-made graphs: what is folded, what is left, what is skipped."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surety_serving.kernels import reference
from surety_serving.optimize.options import OptimizeOptions
from surety_serving.optimize.pipeline import optimize, rewrite
from tests.service.optimize.graphs import (
    floats,
    initializer,
    make_model,
    node_of,
    ops,
    run_ort,
    scalar,
)

pytestmark = pytest.mark.unit

SCORES = [2, 3, 5]


def scaled_softmax(
    op_type: str = "Mul", constant_node: bool = False, also_output: bool = False
) -> onnx.ModelProto:
    """Softmax(op(x, c)) over the last axis, c = 0.5 an initializer or a Constant node."""
    nodes = [
        helper.make_node(op_type, ["x", "c"], ["z"], name="scaling"),
        helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1),
    ]
    initializers: dict[str, np.ndarray] = {}
    if constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["c"], value_float=0.5))
    else:
        initializers["c"] = scalar(0.5)
    outputs = [floats("y", SCORES)] + ([floats("z", SCORES)] if also_output else [])
    return make_model(nodes, [floats("x", SCORES)], outputs, initializers)


def feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(SCORES).astype(np.float32)}


def test_a_constant_mul_is_folded_into_scale() -> None:
    model, report = optimize(scaled_softmax())
    assert ops(model) == ["TwoPassSoftmax"]
    fused = node_of(model, "TwoPassSoftmax")
    assert fused.input[0] == "x" and fused.output[0] == "y"
    assert initializer(model, fused.input[1]) == np.float32(0.5)
    assert [c.node for c in report.replaced] == ["softmax"]
    assert "scale 0.5 from Mul 'scaling'" in report.replaced[0].detail
    assert report.drift["y"] <= 1e-6
    (got,) = run_ort(model, feeds())
    np.testing.assert_allclose(got, reference.two_pass_softmax(feeds()["x"], 0.5)[0], rtol=1e-5)


def test_a_div_by_a_constant_node_becomes_its_reciprocal() -> None:
    model, _ = optimize(scaled_softmax("Div", constant_node=True))
    assert ops(model) == ["TwoPassSoftmax"]
    assert initializer(model, node_of(model, "TwoPassSoftmax").input[1]) == np.float32(2.0)


def test_a_scaling_read_elsewhere_stays() -> None:
    model, report = optimize(scaled_softmax(also_output=True))
    assert ops(model) == ["Mul", "TwoPassSoftmax"]
    assert list(node_of(model, "TwoPassSoftmax").input) == ["z"]
    assert report.drift["z"] == 0.0 and report.drift["y"] <= 1e-6


def test_softmax_on_a_middle_axis_is_skipped() -> None:
    model = make_model(
        [helper.make_node("Softmax", ["x"], ["y"], name="middle", axis=1)],
        [floats("x", SCORES)],
        [floats("y", SCORES)],
    )
    rewritten, report = optimize(model)
    assert ops(rewritten) == ["Softmax"]
    assert report.replaced == []
    assert [(c.node, c.kind) for c in report.skipped] == [("middle", "softmax")]
    assert report.skipped[0].detail == "axis 1 of a rank-3 input is not the last axis"


def masked_softmax(fill: float, inverted: bool = False) -> onnx.ModelProto:
    """Softmax(Add(Mul(x, 0.25), Where(keep, 0, fill))), keep [2, 1, 5] bool."""
    branches = ["fill", "zero"] if inverted else ["zero", "fill"]
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["scaled"], name="scaling"),
        helper.make_node("Where", ["keep", *branches], ["bias"], name="mask"),
        helper.make_node("Add", ["scaled", "bias"], ["z"], name="add_mask"),
        helper.make_node("Softmax", ["z"], ["y"], name="softmax"),
    ]
    inputs = [
        floats("x", SCORES),
        helper.make_tensor_value_info("keep", TensorProto.BOOL, [2, 1, 5]),
    ]
    values = {"c": scalar(0.25), "zero": scalar(0.0), "fill": scalar(fill)}
    return make_model(nodes, inputs, [floats("y", SCORES)], values)


def mask_feeds() -> list[dict[str, np.ndarray]]:
    keep = np.random.default_rng(1).random((2, 1, 5)) < 0.6
    keep[..., 0] = True  # no row with nothing kept
    return [{**feeds(), "keep": keep}, {**feeds(1), "keep": ~keep | (np.arange(5) == 4)}]


@pytest.mark.parametrize("inverted", [False, True])
def test_a_where_minus_inf_mask_is_folded(inverted: bool) -> None:
    model, report = optimize(masked_softmax(-np.inf, inverted), samples=mask_feeds())
    fused = node_of(model, "TwoPassSoftmax")
    assert ops(model) == (["Not", "TwoPassSoftmax"] if inverted else ["TwoPassSoftmax"])
    assert fused.input[0] == "x"
    assert fused.input[2] == ("keep" if not inverted else node_of(model, "Not").output[0])
    assert "mask from Where 'mask'" in report.replaced[0].detail
    assert report.drift["y"] <= 1e-6


def test_a_sentinel_mask_is_left_as_an_add() -> None:
    model, report = optimize(masked_softmax(float(np.finfo(np.float32).min)), samples=mask_feeds())
    assert ops(model) == ["Mul", "Where", "Add", "TwoPassSoftmax"]
    # The scaling under a kept Add is no scaling of the softmax's input: it stays.
    assert list(node_of(model, "TwoPassSoftmax").input) == ["z"]
    assert "mask Add 'add_mask' kept: its mask fills with -3.40282e+38" in report.replaced[0].detail


def test_a_constant_zero_minus_inf_mask_becomes_a_bool_constant() -> None:
    causal = np.triu(np.full((5, 5), -np.inf, dtype=np.float32), k=1)
    model = make_model(
        [
            helper.make_node("Add", ["x", "causal"], ["z"], name="add_mask"),
            helper.make_node("Softmax", ["z"], ["y"], name="softmax"),
        ],
        [floats("x", [2, 5, 5])],
        [floats("y", [2, 5, 5])],
        {"causal": causal},
    )
    x = np.random.default_rng(0).standard_normal((2, 5, 5)).astype(np.float32)
    rewritten, report = optimize(model, samples=[{"x": x}])
    assert ops(rewritten) == ["TwoPassSoftmax"]
    mask = initializer(rewritten, node_of(rewritten, "TwoPassSoftmax").input[2])
    np.testing.assert_array_equal(mask, causal == 0)
    assert report.drift["y"] <= 1e-6


def test_no_softmax_leaves_the_graph_alone() -> None:
    model, report = rewrite(scaled_softmax(), OptimizeOptions(softmax=False))
    assert ops(model) == ["Mul", "Softmax"]
    assert report.replaced == report.skipped == []
