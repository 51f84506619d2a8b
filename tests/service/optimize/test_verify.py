"""The drift check's measure: |rewritten − original| against the output's magnitude, max(1,
max |original|), so outputs in the hundreds get a relative bound and unit-sized ones an absolute
one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surety_serving.optimize.verify import difference, drift, magnitude

pytestmark = pytest.mark.unit


def affine(scale: float, shift: float) -> onnx.ModelProto:
    """y = x · scale + shift, float32 [N]."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("shift", TensorProto.FLOAT, [], [shift]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_large_outputs_are_measured_relative_to_their_magnitude():
    samples = [{"x": np.array([120.0, -250.0, 3.0], dtype=np.float32)}]
    # 2e-6 relative: 5e-4 absolute on the largest element, which an absolute 1e-4 would refuse.
    measured = drift(affine(1.0, 0.0), affine(1.0 + 2e-6, 0.0), samples)["y"]
    assert measured == pytest.approx(2e-6, rel=0.1)


def test_unit_sized_outputs_keep_an_absolute_bound():
    samples = [{"x": np.array([0.5, 0.01, -0.2], dtype=np.float32)}]
    measured = drift(affine(1.0, 0.0), affine(1.0, 2e-4), samples)["y"]
    assert measured == pytest.approx(2e-4, rel=0.01)


def test_the_magnitude_ignores_non_finite_elements_and_is_at_least_one():
    assert magnitude(np.array([np.inf, -300.0, np.nan], dtype=np.float32)) == 300.0
    assert magnitude(np.array([0.25, -0.5], dtype=np.float32)) == 1.0
    assert magnitude(np.array([], dtype=np.float32)) == 1.0


def test_a_nan_on_one_side_is_an_infinite_difference():
    expected = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    assert difference(expected, expected.copy()) == 0.0
    assert difference(expected, np.array([1.0, 2.0, np.inf], dtype=np.float32)) == np.inf
