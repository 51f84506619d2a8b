"""Additive attention masks: recognising the ``Where(cond, 0, fill)`` form exporters build from
a boolean mask, so that the rewrites can take ``cond`` itself."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from surety_serving.optimize.graph import ONNX_DOMAINS, Graph

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


@dataclass(frozen=True)
class Term:
    """One conjunct of a boolean attention mask: ``name`` (bool) where ``keep`` says which value
    keeps a key (True: true keeps it; False: true excludes it). ``static`` when it is computed
    from the graph inputs' shapes alone (a causal or banded pattern), not from their values."""

    name: str
    keep: bool
    static: bool


@dataclass(frozen=True)
class BooleanMask:
    """An additive mask that is ``fill`` where a boolean expression excludes the element and 0
    where it keeps it, with that expression split into the conjuncts every kept element must
    satisfy: ``node`` is the Where (``Where(cond, 0, fill)``) or the Mul
    (``Cast(excluded, float) · fill``) that turns the boolean into the additive mask."""

    node: onnx.NodeProto
    terms: tuple[Term, ...]
    fill: float


def _cast_to_float(graph: Graph, name: str) -> str | None:
    """``b`` when ``name`` is ``Cast(b, to=float)`` of a bool ``b``."""
    node = graph.producer(name)
    if (
        node is None
        or node.op_type != "Cast"
        or node.domain not in ONNX_DOMAINS
        or graph.elem_type(node.input[0]) != onnx.TensorProto.BOOL
    ):
        return None
    return str(node.input[0])


def _fill_product(graph: Graph, name: str) -> tuple[onnx.NodeProto, str, float] | None:
    """(the Mul, b, fill) when ``name`` is ``Cast(b, float) · fill`` with fill ≤ EXCLUDED_BELOW:
    fill where b is true, 0 where it is false, the form ``(~allowed) * finfo.min`` exports as."""
    node = graph.producer(name)
    if node is None or node.op_type != "Mul" or node.domain not in ONNX_DOMAINS:
        return None
    for operand, constant in (tuple(node.input), tuple(node.input)[::-1]):
        excluded, fill = _cast_to_float(graph, operand), graph.scalar(constant)
        if excluded is not None and fill is not None and fill <= EXCLUDED_BELOW:
            return node, excluded, fill
    return None


def _shape_only(graph: Graph, name: str) -> bool:
    """Whether ``name`` depends on no graph input's values: every path up to an input passes
    through a Shape (or Size) node, which reads the shape alone."""
    pending, seen = [name], set()
    while pending:
        value = pending.pop()
        if value in seen or not value:
            continue
        seen.add(value)
        node = graph.producer(value)
        if node is None:
            if graph.constant(value) is None:
                return False  # a graph input (or an initializer the caller may feed)
            continue
        if node.op_type not in ("Shape", "Size"):
            pending.extend(node.input)
    return True


def _conjuncts(graph: Graph, name: str, keep: bool) -> list[Term]:
    """Split ``name`` (keep: true keeps) into terms that must all keep an element: And under
    keep, Or under exclusion (De Morgan: ¬(a ∨ b) = ¬a ∧ ¬b), Not flips which value keeps."""
    node = graph.producer(name)
    if node is not None and node.domain in ONNX_DOMAINS:
        if node.op_type == "Not":
            return _conjuncts(graph, node.input[0], not keep)
        if (node.op_type, keep) in (("And", True), ("Or", False)):
            return [term for operand in node.input for term in _conjuncts(graph, operand, keep)]
    value = graph.constant(name)
    if value is not None and value.dtype == np.bool_ and bool(np.all(value == keep)):
        return []  # a constant that keeps every element (the dynamo exporter's ``new_ones``)
    return [Term(name, keep, _shape_only(graph, name))]


def boolean_mask(graph: Graph, name: str) -> BooleanMask | None:
    """The boolean form of the additive mask ``name``: ``Where(cond, 0, fill)`` (or inverted)
    or ``Cast(excluded, float) · fill``, fill ≤ EXCLUDED_BELOW; None for any other mask."""
    where = where_mask(graph, name)
    if where is not None:
        terms = _conjuncts(graph, where.cond, not where.inverted)
        return BooleanMask(where.node, tuple(terms), where.fill)
    product = _fill_product(graph, name)
    if product is None:
        return None
    node, excluded, fill = product
    return BooleanMask(node, tuple(_conjuncts(graph, excluded, False)), fill)
