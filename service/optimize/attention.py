"""Attention → ``ai.surety::SparseAttention`` (BSNH: Q [B, S, H·d], K [B, T, H·d], V [B, T, H·dv],
key_padding_mask [B, T]).

Two sources are matched:

* the subgraph exporters write, found from each Softmax::

      P = Softmax(Add(Mul(MatMul(Mul(Qh, a), Mul(Kt, b)), c), mask))   (every Mul optional)
      Y = MatMul(P, Vh)           or   MatMul(Where(IsNaN(P), 0, P), Vh)

  with Qh [B, H, S, d], Kt [B, H, d, T], Vh [B, H, T, dv] (H, d, dv static); the scalar Muls (or
  Divs) multiply into the op's ``scale``. Q, K and V are brought to BSNH with Transpose and
  Reshape nodes (ORT's transpose optimizer cancels them against the exporter's), and Y back to
  [B, H, S, dv]. The additive mask [B, 1|H, S|1, T] is taken as a **key-padding mask**, the
  same for every query and head: its row [:, 0, 0, :] is kept where it is above -1e4 (for
  ``Where(cond, 0, fill)``, cond itself). Masks that differ between queries (causal, banded)
  are not key-padding masks: the drift check refuses the result.
* ORT's fused ``com.microsoft.MultiHeadAttention`` with separate 3-D query, key and value, no
  bias, attention bias or past state, and a [B, T] key_padding_mask if any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

import kernels
from service.optimize.graph import ONNX_DOMAINS, Graph, label, same_dim
from service.optimize.masks import EXCLUDED_BELOW, WhereMask, where_mask
from service.optimize.options import SparseOptions
from service.optimize.report import Report
from service.optimize.softmax import last_axis_problem, scale_factor

ATTENTION_OP = "SparseAttention"
KIND = "attention"
MHA_KIND = "multi_head_attention"
MHA_DOMAIN = "com.microsoft"
#: MultiHeadAttention's key_padding_mask input. Its others beyond query, key and value (bias,
#: attention_bias, past_key, past_value, …) have no SparseAttention counterpart.
MHA_KEY_PADDING_INPUT = 4
#: BNSH ↔ BSNH: the transposes the rewrite inserts (Kt [B, H, d, T] → [B, T, H, d]).
TO_BSNH = [0, 2, 1, 3]
KT_TO_BSNH = [0, 3, 1, 2]


@dataclass
class _Match:
    """An exporter attention subgraph, found from its Softmax."""

    softmax: onnx.NodeProto
    output: onnx.NodeProto  # MatMul(P, Vh), whose output the rewrite computes instead
    q: str
    k: str
    v: str
    heads: int = 0
    value_size: int = 0
    scale: float = 1.0
    mask: str | None = None
    where: WhereMask | None = None


def _probabilities_reader(graph: Graph, softmax: onnx.NodeProto) -> onnx.NodeProto | None:
    """The MatMul(P, Vh) reading the softmax output P, directly or through the exporter's
    ``Where(IsNaN(P), 0, P)`` guard (None when P goes anywhere else)."""
    p = softmax.output[0]
    readers = graph.consumers(p)
    guard = p
    if len(readers) == 2 and {r.op_type for r in readers} == {"IsNaN", "Where"}:
        isnan = next(r for r in readers if r.op_type == "IsNaN")
        where = next(r for r in readers if r.op_type == "Where")
        if (
            list(where.input) == [isnan.output[0], where.input[1], p]
            and graph.scalar(where.input[1]) == 0.0
            and graph.only_consumer(isnan.output[0]) is where
        ):
            guard = where.output[0]
    reader = graph.only_consumer(guard)
    if reader is None or reader.op_type != "MatMul" or reader.input[0] != guard:
        return None
    return reader


def _scores(graph: Graph, softmax: onnx.NodeProto) -> tuple[onnx.NodeProto, float, str | None]:
    """Walk up from the softmax input: (the MatMul(Qh, Kt), the product of the scalings, the
    additive mask). Raises ValueError saying why the walk stopped short of a MatMul."""
    x, scale, mask = softmax.input[0], 1.0, None
    while True:
        node = graph.producer(x)
        if node is None or graph.only_consumer(x) is None:
            raise ValueError(f"the scores '{x}' are a graph input or read elsewhere")
        if node.domain in ONNX_DOMAINS and node.op_type == "MatMul":
            return node, scale, mask
        scaling = scale_factor(graph, node)
        if scaling is not None:
            x, factor = scaling
            scale *= factor
            continue
        if node.domain in ONNX_DOMAINS and node.op_type == "Add" and mask is None and scale > 0:
            # The mask is the operand that is no chain of scalings down to the MatMul.
            scores, other = node.input
            if _leads_to_matmul(graph, other):
                scores, other = other, scores
            if _leads_to_matmul(graph, scores):
                x, mask = scores, other
                continue
        raise ValueError(
            f"the scores come from {node.op_type} '{node.name}', not MatMul(Q, Kᵀ) under "
            "constant scalings and one additive mask"
        )


def _leads_to_matmul(graph: Graph, name: str) -> bool:
    node = graph.producer(name)
    while node is not None and graph.only_consumer(name) is not None:
        if node.domain in ONNX_DOMAINS and node.op_type == "MatMul":
            return True
        scaling = scale_factor(graph, node)
        if scaling is None:
            return False
        name = scaling[0]
        node = graph.producer(name)
    return False


def _unscaled(graph: Graph, name: str) -> tuple[str, float]:
    """(x, c) for ``name`` = x scaled by the constant c (c = 1 when it is not scaled)."""
    node = graph.producer(name)
    scaling = (
        None if node is None or graph.only_consumer(name) is None else scale_factor(graph, node)
    )
    return scaling if scaling is not None else (name, 1.0)


def _match(graph: Graph, softmax: onnx.NodeProto) -> _Match | str:
    """The attention subgraph around ``softmax``, or why there is none to rewrite."""
    problem = last_axis_problem(graph, softmax)
    if problem is not None:
        return problem
    if graph.rank(softmax.input[0]) != 4:
        return f"scores of rank {graph.rank(softmax.input[0])}, not [B, H, S, T]"
    output = _probabilities_reader(graph, softmax)
    if output is None:
        return "the probabilities are not read by one MatMul with V alone"
    try:
        scores, scale, mask = _scores(graph, softmax)
    except ValueError as error:
        return str(error)
    (q, q_scale), (k, k_scale) = (_unscaled(graph, name) for name in scores.input)
    match = _Match(softmax, output, q, k, output.input[1], scale=scale * q_scale * k_scale)
    q_shape, k_shape, v_shape = (graph.shape(name) for name in (match.q, match.k, match.v))
    if (
        q_shape is None
        or k_shape is None
        or v_shape is None
        or not (len(q_shape) == len(k_shape) == len(v_shape) == 4)
    ):
        return f"Q, Kᵀ, V shapes {q_shape}, {k_shape}, {v_shape} are not all rank 4"
    heads, size, value_size = q_shape[1], q_shape[3], v_shape[3]
    if not (
        isinstance(heads, int)
        and isinstance(size, int)
        and isinstance(value_size, int)
        and k_shape[1] == v_shape[1] == heads
        and k_shape[2] == size
    ):
        return (
            f"heads and head sizes are not static and consistent: Q {q_shape}, Kᵀ {k_shape}, "
            f"V {v_shape} (expected [B, H, S, d], [B, H, d, T], [B, H, T, dv])"
        )
    match.heads, match.value_size = heads, value_size
    if mask is not None:
        match.where = where_mask(graph, mask)
        source = graph.shape(mask if match.where is None else match.where.cond)
        # SparseAttention takes one row of keys per batch row: the mask must have both axes.
        if not (
            source is not None
            and len(source) == 4
            and same_dim(source[0], q_shape[0])
            and same_dim(source[3], k_shape[3])
        ):
            return (
                f"the additive mask has shape {source}, not [B, 1|H, S|1, T] with Q's B "
                f"({q_shape[0]}) and Kᵀ's T ({k_shape[3]})"
            )
        match.mask = mask
    return match


def _bsnh(graph: Graph, name: str, perm: list[int], flat: str, tag: str) -> list[onnx.NodeProto]:
    transpose = graph.node("Transpose", [name], name=f"{tag}_bsnh", perm=perm)
    reshape = graph.node("Reshape", [transpose.output[0], flat], name=f"{tag}_flat")
    return [transpose, reshape]


def _key_padding(
    graph: Graph, mask: str, where: WhereMask | None, base: str
) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing key_padding_mask [B, T] (bool, true = keep) from the additive mask's
    first query row and first head (from the cond of its Where form, when it has one)."""
    source = mask if where is None else where.cond
    first = graph.add_initializer(f"{base}_first", np.array(0, dtype=np.int64))
    row = graph.node("Gather", [source, first], name=f"{base}_query0", axis=2)
    head = graph.node("Gather", [row.output[0], first], name=f"{base}_head0", axis=1)
    nodes = [row, head]
    if where is None:
        bound = graph.add_initializer(f"{base}_bound", np.array(EXCLUDED_BELOW, np.float32))
        nodes.append(graph.node("Greater", [head.output[0], bound], name=f"{base}_keep"))
    elif where.inverted:
        nodes.append(graph.node("Not", [head.output[0]], name=f"{base}_keep"))
    return nodes, nodes[-1].output[0]


def _rewrite(graph: Graph, match: _Match, sparse: SparseOptions) -> str:
    base = match.softmax.name or "attention"
    flat = graph.add_initializer(f"{base}_bsnh_shape", np.array([0, 0, -1], dtype=np.int64))
    nodes = [
        *_bsnh(graph, match.q, TO_BSNH, flat, f"{base}_q"),
        *_bsnh(graph, match.k, KT_TO_BSNH, flat, f"{base}_k"),
        *_bsnh(graph, match.v, TO_BSNH, flat, f"{base}_v"),
    ]
    inputs = [node.output[0] for node in nodes[1::2]]
    padding = "no mask"
    if match.mask is not None:
        mask_nodes, key_padding = _key_padding(graph, match.mask, match.where, base)
        nodes += mask_nodes
        inputs.append(key_padding)
        padding = (
            f"key padding from Where '{match.where.node.name}'"
            if match.where is not None
            else f"key padding from mask '{match.mask}' > {EXCLUDED_BELOW:g}"
        )
    attention = graph.node(
        ATTENTION_OP,
        inputs,
        name=f"{base}_sparse",
        domain=kernels.DOMAIN,
        num_heads=match.heads,
        scale=match.scale,
        causal=0,
        **sparse.attributes(),
    )
    split = graph.add_initializer(
        f"{base}_heads_shape", np.array([0, 0, match.heads, match.value_size], dtype=np.int64)
    )
    heads = graph.node("Reshape", [attention.output[0], split], name=f"{base}_heads")
    back = graph.node(
        "Transpose", [heads.output[0]], match.output.output[:1], name=f"{base}_bnsh", perm=TO_BSNH
    )
    graph.replace(match.output, [*nodes, attention, heads, back])
    return f"{match.heads} heads, dv {match.value_size}, scale {match.scale:.6g}, {padding}"


def _rewrite_mha(graph: Graph, node: onnx.NodeProto, sparse: SparseOptions) -> str | None:
    """Replace one MultiHeadAttention; return why not when it cannot be."""
    inputs = list(node.input)
    if len(inputs) < 3 or not all(inputs[:3]):
        return "packed QKV (no separate key and value)"
    extra = [name for i, name in enumerate(inputs[3:], 3) if name and i != MHA_KEY_PADDING_INPUT]
    if extra:
        return f"inputs {extra} (bias, attention bias or past state) have no SparseAttention form"
    if any(node.output[1:]):
        return "its present key/value outputs are used"
    ranks = [graph.rank(name) for name in inputs[:3]]
    if ranks != [3, 3, 3]:
        return f"query/key/value ranks {ranks}: only [B, S, H·d] (BSNH) is taken"
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    nodes: list[onnx.NodeProto] = []
    sources = inputs[:3]
    if len(inputs) > MHA_KEY_PADDING_INPUT and inputs[MHA_KEY_PADDING_INPUT]:
        mask = inputs[MHA_KEY_PADDING_INPUT]
        if graph.rank(mask) != 2:
            return f"key_padding_mask of shape {graph.shape(mask)}: only [B, T] is taken"
        cast = graph.node("Cast", [mask], name=f"{node.name}_keep", to=onnx.TensorProto.BOOL)
        nodes.append(cast)
        sources.append(cast.output[0])
    nodes.append(
        graph.node(
            ATTENTION_OP,
            sources,
            node.output[:1],
            name=f"{node.name or 'mha'}_sparse",
            domain=kernels.DOMAIN,
            num_heads=int(attributes["num_heads"]),
            scale=float(attributes.get("scale", 0.0)),
            causal=int(attributes.get("unidirectional", 0)),
            **sparse.attributes(),
        )
    )
    graph.replace(node, nodes)
    return None


def rewrite_attention(graph: Graph, sparse: SparseOptions, report: Report) -> None:
    """Replace every attention subgraph and MultiHeadAttention the module docstring describes."""
    for node in list(graph.nodes):
        if node.op_type == "Softmax" and node.domain in ONNX_DOMAINS:
            found = _match(graph, node)
            if isinstance(found, str):
                report.skip(label(node), KIND, found)
                continue
            detail = _rewrite(graph, found, sparse)
            report.replace(label(node), KIND, f"{ATTENTION_OP}: {detail}")
        elif node.op_type == "MultiHeadAttention" and node.domain == MHA_DOMAIN:
            reason = _rewrite_mha(graph, node, sparse)
            if reason is None:
                report.replace(label(node), MHA_KIND, ATTENTION_OP)
            else:
                report.skip(label(node), MHA_KIND, reason)
