"""Additive attention masks: recognising the ``Where(cond, 0, fill)`` form exporters build from
a boolean mask, so that the rewrites can take ``cond`` itself."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from service.optimize.graph import ONNX_DOMAINS, Graph

#: An additive mask entry at or below this excludes its element for any practical score: the
#: sentinels exporters write (-inf, float32's lowest -3.4e38, -1e9, HF's -1e4) all are.
EXCLUDED_BELOW = -1e4


@dataclass(frozen=True)
class WhereMask:
    """``Where(cond, 0, fill)`` (``inverted``: ``Where(cond, fill, 0)``), fill ≤ EXCLUDED_BELOW.

    ``exact`` when fill is -inf: adding it is then exactly what excluding the element does.
    A finite sentinel matches exclusion except in a row with nothing kept, where the sum
    rounds every element to the sentinel and the softmax comes out uniform, not empty.
    """

    node: onnx.NodeProto
    cond: str
    inverted: bool
    fill: float

    @property
    def exact(self) -> bool:
        return self.fill == -math.inf


def where_mask(graph: Graph, name: str) -> WhereMask | None:
    """The Where-form mask computing ``name``, if that is what computes it."""
    node = graph.producer(name)
    if node is None or node.op_type != "Where" or node.domain not in ONNX_DOMAINS:
        return None
    cond, when_true, when_false = node.input
    if graph.elem_type(cond) != onnx.TensorProto.BOOL:
        return None
    values = (graph.scalar(when_true), graph.scalar(when_false))
    for inverted, (zero, fill) in ((False, values), (True, values[::-1])):
        if zero == 0.0 and fill is not None and fill <= EXCLUDED_BELOW:
            return WhereMask(node, cond, inverted, fill)
    return None
