"""Attention → ``ai.surety::SparseAttention`` (BSNH: Q [B, S, H·d], K [B, T, H·d], V [B, T, H·dv],
key_padding_mask [B, T]).

Two sources are matched:

* the subgraph exporters write, found from each Softmax::

      P = Softmax(Add(Mul(MatMul(Mul(Qh, a), Mul(Kt, b)), c), mask))   (every Mul optional)
      Y = MatMul(P, Vh)           or   MatMul(Where(IsNaN(P), 0, P), Vh)

  with Qh [B, H, S, d], Kt [B, H, d, T], Vh [B, H, T, dv] (H, d, dv static: from shape
  inference, or from probe runs where it leaves them symbolic); the scalar Muls (or
  Divs) multiply into the op's ``scale``. Q, K and V are brought to BSNH with Transpose and
  Reshape nodes (ORT's transpose optimizer cancels them against the exporter's), and Y back to
  [B, H, S, dv]. A boolean mask made additive (``Where(cond, 0, fill)`` or
  ``Cast(excluded) · fill``) whose boolean has a part computed from shapes alone is taken as
  **causal + key padding**: its conjuncts must each be the causal pattern j ≤ i (evaluated in
  probe runs of the original model) or a key-padding row [B, 1, 1, T], and the op gets
  causal=1 and the rows. Any other additive mask [B, 1|H, S|1, T] is taken as a **key-padding
  mask**, the same for every query and head: its row [:, 0, 0, :] is kept where it is above
  -1e4 (for ``Where(cond, 0, fill)``, cond itself). Masks fed at run time that differ between
  queries are not key-padding masks: the drift check refuses the result.
* ORT's fused ``com.microsoft.MultiHeadAttention`` with separate 3-D query, key and value, no
  bias, attention bias or past state, and a [B, T] key_padding_mask if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from surety_serving import kernels
from surety_serving.optimize.graph import ONNX_DOMAINS, Dim, Graph, label
from surety_serving.optimize.masks import (
    EXCLUDED_BELOW,
    BooleanMask,
    Term,
    WhereMask,
    boolean_mask,
    where_mask,
)
from surety_serving.optimize.options import OptimizeError, SparseOptions
from surety_serving.optimize.report import Report
from surety_serving.optimize.softmax import last_axis_problem, scale_factor
from surety_serving.optimize.verify import probe

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

#: A dimension as inference gives it, or as the probe runs saw it: one size per run when it
#: changed between them.
Size = Dim | tuple[int, ...]
#: Probed values: name → its value in each probe run.
Probed = dict[str, list[np.ndarray]]


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
    # Set when the mask has a part computed from shapes alone: then it must be causal + padding.
    boolean: BooleanMask | None = None
    causal: bool = False
    padding: list[Term] = field(default_factory=list)


def _probabilities_reader(graph: Graph, softmax: onnx.NodeProto) -> onnx.NodeProto | None:
    """The MatMul(P, Vh) reading the softmax output P, directly or through the exporter's
    ``Where(IsNaN(P), 0, P)`` guard (None when P goes anywhere else)."""
    p = softmax.output[0]
    # Casts to the type P already has (eager attention's softmax(…, dtype=float32).to(dtype))
    # change nothing; the rewrite drops them with the rest.
    while (cast := graph.only_consumer(p)) is not None and _identity_cast(graph, cast):
        p = cast.output[0]
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


def _identity_cast(graph: Graph, node: onnx.NodeProto) -> bool:
    if node.op_type != "Cast" or node.domain not in ONNX_DOMAINS:
        return False
    to = {a.name: a.i for a in node.attribute}.get("to")
    return to is not None and graph.elem_type(node.input[0]) == to


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


def _locate(graph: Graph, softmax: onnx.NodeProto) -> _Match | str:
    """The attention subgraph around ``softmax`` by its structure alone, or why there is none
    (its shapes are checked by :func:`_check`)."""
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
    if mask is not None:
        match.mask = mask
        match.where = where_mask(graph, mask)
        boolean = boolean_mask(graph, mask)
        # A mask with a part computed from shapes alone is taken as causal + key padding; any
        # other is the key-padding mask of the module docstring (as before the causal form).
        if boolean is not None and any(term.static for term in boolean.terms):
            match.boolean = boolean
    return match


def _probed_names(match: _Match) -> dict[str, None]:
    """The values :func:`_check` reads, in order and once each."""
    names = [match.q, match.k, match.v]
    if match.mask is not None:
        names.append(_mask_source(match))
    if match.boolean is not None:
        names += [term.name for term in match.boolean.terms]
    return dict.fromkeys(names)


def _mask_source(match: _Match) -> str:
    """What the key-padding row is read from: the Where's cond, else the additive mask."""
    assert match.mask is not None
    return match.mask if match.where is None else match.where.cond


def _needs_probe(graph: Graph, match: _Match) -> bool:
    """Whether shape inference leaves the match's head count or sizes symbolic, or its mask
    has a part whose values only a run shows (the causal pattern)."""
    if match.boolean is not None:
        return True
    # H and d of Q [B, H, S, d], Kᵀ [B, H, d, T]; H and dv of V [B, H, T, dv].
    axes = ((match.q, (1, 3)), (match.k, (1, 2)), (match.v, (1, 3)))
    for name, wanted in axes:
        shape = graph.shape(name)
        if shape is None or len(shape) != 4 or not all(isinstance(shape[a], int) for a in wanted):
            return True
    return False


def _dims(graph: Graph, probed: Probed, name: str) -> list[Size] | None:
    """The shape of ``name``: from the probe runs when it was probed (see :func:`_dims_of`),
    else from shape inference."""
    if name in probed:
        return _dims_of(probed[name]) or None
    shape = graph.shape(name)
    return None if shape is None else list(shape)


def _dims_of(values: list[np.ndarray]) -> list[Size]:
    """Per axis, the size when it is the same in every probe run, else the sizes per run: only
    another value whose axis moves the same way matches it ([] when the ranks differ)."""
    runs = [value.shape for value in values]
    if len({len(shape) for shape in runs}) != 1:
        return []
    return [axis[0] if len(set(axis)) == 1 else tuple(axis) for axis in zip(*runs, strict=True)]


def _same(a: Size, b: Size) -> bool:
    return a is not None and a == b


def _check(graph: Graph, match: _Match, probed: Probed) -> str | None:
    """Fill in the match's heads and sizes and settle its mask; say why not when it cannot be
    rewritten."""
    q_shape, k_shape, v_shape = (_dims(graph, probed, name) for name in (match.q, match.k, match.v))
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
    if match.boolean is not None:
        reason = _causal(match, probed, q_shape, k_shape)
        if reason is not None or match.causal:
            return reason
        # Its shape-only parts keep everything: the key-padding mask of the module docstring.
        match.boolean = None
        match.padding.clear()
    if match.mask is not None:
        source = _dims(graph, probed, _mask_source(match))
        # SparseAttention takes one row of keys per batch row: the mask must have both axes.
        if not (
            source is not None
            and len(source) == 4
            and _same(source[0], q_shape[0])
            and _same(source[3], k_shape[3])
        ):
            return (
                f"the additive mask has shape {source}, not [B, 1|H, S|1, T] with Q's B "
                f"({q_shape[0]}) and Kᵀ's T ({k_shape[3]})"
            )
    return None


def _causal(match: _Match, probed: Probed, q_shape: list[Size], k_shape: list[Size]) -> str | None:
    """Settle a boolean mask as causal + key padding: each of its terms must be, in every probe
    run, either computed from shapes alone and equal to the causal pattern (key j kept for
    query i iff j ≤ i, the same for every batch row and head) or all true, or a key-padding
    row [B, 1, 1, T]. Anything else (a band, a per-query mask fed at run time) is refused:
    SparseAttention has no other per-query mask."""
    assert match.boolean is not None
    if any(term.name not in probed for term in match.boolean.terms):
        return "the mask has a part computed from shapes alone, and no probe run evaluated it"
    for term in match.boolean.terms:
        if not term.static:
            shape = _dims_of(probed[term.name])
            if not (
                len(shape) == 4
                and shape[1] == shape[2] == 1
                and _same(shape[0], q_shape[0])
                and _same(shape[3], k_shape[3])
            ):
                return (
                    f"mask part '{term.name}' of shape {shape} is neither computed from shapes "
                    f"alone (causal) nor a key-padding row [B, 1, 1, T] with Q's B "
                    f"({q_shape[0]}) and Kᵀ's T ({k_shape[3]})"
                )
            match.padding.append(term)
            continue
        runs = zip(probed[term.name], probed[match.q], probed[match.k], strict=True)
        for value, q, kt in runs:
            kept = value if term.keep else ~value
            queries, keys = q.shape[2], kt.shape[3]
            if kept.ndim <= 4 and kept.all():
                continue  # keeps everything: no condition
            if kept.ndim > 4 or kept.shape[-2:] != (queries, keys):
                return (
                    f"mask part '{term.name}' of shape {list(kept.shape)} is not [.., S, T] "
                    f"for S = {queries}, T = {keys}"
                )
            # np.tri: ones where column j ≤ row i, the lower triangle.
            causal = np.broadcast_to(np.tri(queries, keys, dtype=bool), kept.shape)
            if queries != keys or not np.array_equal(kept, causal):
                return (
                    f"mask part '{term.name}' is computed from shapes alone but is not the "
                    f"causal pattern (key j ≤ query i) at S = {queries}, T = {keys}"
                )
            match.causal = True
    return None


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


def _padding_rows(graph: Graph, terms: list[Term], base: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing key_padding_mask [B, T] (bool, true = keep) as the And of the key-padding
    rows [B, 1, 1, T] (none: no nodes, and "")."""
    nodes: list[onnx.NodeProto] = []
    first = graph.add_initializer(f"{base}_first", np.array(0, dtype=np.int64)) if terms else ""
    kept: list[str] = []
    for term in terms:
        row = graph.node("Gather", [term.name, first], name=f"{base}_query0", axis=2)
        head = graph.node("Gather", [row.output[0], first], name=f"{base}_head0", axis=1)
        nodes += [row, head]
        if not term.keep:
            nodes.append(graph.node("Not", [head.output[0]], name=f"{base}_keep"))
        kept.append(nodes[-1].output[0])
    while len(kept) > 1:
        both = graph.node("And", kept[:2], name=f"{base}_keep_both")
        nodes.append(both)
        kept[:2] = [both.output[0]]
    return nodes, kept[0] if kept else ""


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
    if match.boolean is not None:
        mask_nodes, key_padding = _padding_rows(graph, match.padding, base)
        nodes += mask_nodes
        inputs += [key_padding] if key_padding else []
        causal = f"causal from '{match.boolean.node.name}'" if match.causal else "not causal"
        rows = ", ".join(f"'{term.name}'" for term in match.padding) or "none"
        padding = f"{causal}, key padding from {rows}"
    elif match.mask is not None:
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
        causal=int(match.causal),
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
    """Replace every attention subgraph and MultiHeadAttention the module docstring describes.

    The subgraphs are found first; when shape inference leaves a head count symbolic or a mask
    has a causal part, the original model runs once per probe size to read them
    (:func:`~surety_serving.optimize.verify.probe`)."""
    located = {
        id(node): _locate(graph, node)
        for node in graph.nodes
        if node.op_type == "Softmax" and node.domain in ONNX_DOMAINS
    }
    matches = [found for found in located.values() if isinstance(found, _Match)]
    probed: Probed = {}
    probe_failure = ""
    if any(_needs_probe(graph, match) for match in matches):
        names = {name: None for match in matches for name in _probed_names(match)}
        types = {name: graph.elem_type(name) for name in names}
        try:
            probed = probe(graph.model, {n: t for n, t in types.items() if t is not None})
        except OptimizeError as error:
            # Judged on shape inference alone: what needed the runs is skipped, with this.
            probe_failure = f"; probing the model failed: {error}"
    for node in list(graph.nodes):
        if node.op_type == "Softmax" and node.domain in ONNX_DOMAINS:
            found = located[id(node)]
            reason = found if isinstance(found, str) else _check(graph, found, probed)
            if reason is not None:
                failure = probe_failure if isinstance(found, _Match) else ""
                report.skip(label(node), KIND, reason + failure)
                continue
            assert isinstance(found, _Match)
            detail = _rewrite(graph, found, sparse)
            report.replace(label(node), KIND, f"{ATTENTION_OP}: {detail}")
        elif node.op_type == "MultiHeadAttention" and node.domain == MHA_DOMAIN:
            reason = _rewrite_mha(graph, node, sparse)
            if reason is None:
                report.replace(label(node), MHA_KIND, ATTENTION_OP)
            else:
                report.skip(label(node), MHA_KIND, reason)
