"""Softmax on the last axis → ``ai.surety::TwoPassSoftmax``, folding what feeds it.

``Softmax(Add(Mul(s, c), mask))`` becomes ``TwoPassSoftmax(s, scale=c, mask=cond)`` when:

* ``c`` is a constant scalar of a ``Mul`` (or ``1/c`` of a ``Div``) whose output nothing else
  reads: the op computes ``scale·x`` in float32, rounded once, as the Mul did;
* the mask is ``Where(cond, 0, -inf)`` (or a constant of 0 and -inf) added to the scores and
  read by nothing else: adding -inf is exactly what excluding the element does. A finite
  sentinel (``float32`` lowest, -1e9) is left as an Add: a row with every element masked would
  turn from uniform into zeros. An Add below a folded scale ≤ 0 is left too (c·-inf is no
  longer -inf).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from surety_serving import kernels
from surety_serving.optimize.graph import ONNX_DOMAINS, Graph, broadcasts_into, label
from surety_serving.optimize.masks import where_mask
from surety_serving.optimize.report import Report

SOFTMAX_OP = "TwoPassSoftmax"
KIND = "softmax"


def last_axis_problem(graph: Graph, softmax: onnx.NodeProto) -> str | None:
    """Why ``softmax`` is not a float32 softmax over its input's last axis (None: it is)."""
    x = softmax.input[0]
    elem_type = graph.elem_type(x)
    if elem_type != onnx.TensorProto.FLOAT:
        named = "unknown" if elem_type is None else onnx.TensorProto.DataType.Name(elem_type)
        return f"input type {named}: the ai.surety ops take float32"
    rank = graph.rank(x)
    if rank is None:
        return "input rank unknown to shape inference, so the axis cannot be checked"
    # Before opset 13 the default axis was 1 and the input was flattened to 2-D at the axis:
    # the last axis gives the same result either way.
    opset = graph.opset() or 13
    axis = next((int(a.i) for a in softmax.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    if rank == 0 or axis % rank != rank - 1:
        return f"axis {axis} of a rank-{rank} input is not the last axis"
    return None


def scale_factor(graph: Graph, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(operand, factor) when ``node`` multiplies (Mul) or divides (Div) its operand by a
    constant scalar that keeps the operand's shape."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in ("Mul", "Div"):
        return None
    a, b = node.input
    candidates = [(a, b)] if node.op_type == "Div" else [(a, b), (b, a)]
    for operand, constant in candidates:
        value = graph.scalar(constant)
        shape, rank = graph.shape(constant), graph.rank(operand)
        if value is None or shape is None or rank is None or len(shape) > rank:
            continue
        if graph.constant(operand) is not None:
            continue  # constant × constant is no scaling of scores
        factor = value if node.op_type == "Mul" else 1.0 / value if value else 0.0
        if np.isfinite(factor) and factor != 0.0:
            return operand, factor
    return None


@dataclass
class _Inputs:
    """What the TwoPassSoftmax takes: X, the folded scale, the bool mask, and notes."""

    x: str
    scale: float = 1.0
    mask: str | None = None
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # computing the mask
    notes: list[str] = field(default_factory=list)


def _fold_mask(graph: Graph, add: onnx.NodeProto, folded: _Inputs) -> str | None:
    """Fold the Add's 0/-inf mask into ``folded``; return why not when it cannot."""
    if folded.scale <= 0:
        return f"a folded scale {folded.scale:g} <= 0 multiplies it"
    why = "its other operand is no 0/-inf mask (Where(cond, 0, -inf) or a constant)"
    for scores, other in (tuple(add.input), tuple(add.input)[::-1]):
        where = where_mask(graph, other)
        if where is not None and not where.exact:
            return (
                f"its mask fills with {where.fill:g}, not -inf: a row with every element "
                "masked would turn from uniform to zeros"
            )
        # Neither the Add's other operand nor the cond taking its place may grow the scores.
        mask_shapes = [graph.shape(other)] + ([] if where is None else [graph.shape(where.cond)])
        if not all(broadcasts_into(shape, graph.shape(scores)) for shape in mask_shapes):
            if where is not None:
                why = "the mask is not known to broadcast to the scores' shape"
            continue
        if where is not None:
            mask = where.cond
            if where.inverted:
                invert = graph.node("Not", [where.cond], name=f"{where.node.name}_keep")
                folded.nodes.append(invert)
                mask = invert.output[0]
            folded.x, folded.mask = scores, mask
            folded.notes.append(f"mask from Where '{where.node.name}'")
            return None
        value = graph.constant(other)
        if value is not None and np.isin(value, [0.0, -np.inf]).all():
            folded.x = scores
            folded.mask = graph.add_initializer(f"{add.name}_keep", np.asarray(value == 0))
            folded.notes.append(f"mask from constant '{other}'")
            return None
    return why


def _fold(graph: Graph, softmax: onnx.NodeProto) -> _Inputs:
    """Walk up from the softmax's input through the scalings and the mask it can absorb."""
    folded = _Inputs(softmax.input[0])
    while True:
        node = graph.producer(folded.x)
        if node is None or graph.only_consumer(folded.x) is None:
            return folded
        scaling = scale_factor(graph, node)
        if scaling is not None:
            folded.x, factor = scaling
            folded.scale *= factor
            folded.notes.append(f"scale {factor:g} from {node.op_type} '{node.name}'")
            continue
        if node.op_type == "Add" and node.domain in ONNX_DOMAINS and folded.mask is None:
            reason = _fold_mask(graph, node, folded)
            if reason is None:
                continue
            folded.notes.append(f"mask Add '{node.name}' kept: {reason}")
        return folded


def rewrite_softmax(graph: Graph, report: Report) -> None:
    """Replace every float32 last-axis Softmax of the main graph; report the others."""
    for softmax in [n for n in graph.nodes if n.op_type == "Softmax" and n.domain in ONNX_DOMAINS]:
        problem = last_axis_problem(graph, softmax)
        if problem is not None:
            report.skip(label(softmax), KIND, problem)
            continue
        folded = _fold(graph, softmax)
        scale = ""
        if folded.scale != 1.0:
            scale = graph.add_initializer(
                f"{softmax.name}_scale", np.asarray(folded.scale, dtype=np.float32)
            )
        inputs = [folded.x, scale, folded.mask or ""]
        while not inputs[-1]:
            inputs.pop()
        fused = graph.node(
            SOFTMAX_OP,
            inputs,
            softmax.output[:1],
            name=f"{softmax.name or 'softmax'}_two_pass",
            domain=kernels.DOMAIN,
        )
        graph.replace(softmax, [*folded.nodes, fused])
        report.replace(label(softmax), KIND, "; ".join([SOFTMAX_OP, *folded.notes]))
