"""A mutable view of an ONNX model's main graph for the rewrites: who produces and consumes each
value, constant values, inferred shapes, fresh names, and the removal of what a rewrite leaves
unused."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

#: Dimensions as shape inference gives them: a size, a symbol, or None (unknown).
Dim = int | str | None

#: The default ONNX domain under both of its spellings.
ONNX_DOMAINS = ("", "ai.onnx")


def _subgraph_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Every name read inside ``node``'s subgraphs (If/Loop/Scan bodies): an outer value read
    there is consumed by ``node`` as far as the main graph is concerned."""
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                yield from inner.input
                yield from _subgraph_inputs(inner)


class Graph:
    """The main graph of ``model`` (edited in place), its nodes kept as a list in graph order.

    Shapes come from ``onnx.shape_inference`` with data propagation, run once on the input:
    the rewrites read them only for values that exist before any rewrite.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self._types = {
            value.name: value.type
            for value in (
                *inferred.graph.value_info,
                *inferred.graph.input,
                *inferred.graph.output,
            )
        }
        # An initializer that is also a graph input is only a default: the caller may feed
        # another value, so it is no constant.
        fed = {value.name for value in model.graph.input}
        self._initializers = {t.name: t for t in model.graph.initializer if t.name not in fed}
        self._dropped: set[str] = set()
        self._outputs = {value.name for value in model.graph.output}
        self._taken = {
            *(name for node in self.nodes for name in (*node.input, *node.output, node.name)),
            *fed,
            *self._initializers,
        }
        self._index()

    def _index(self) -> None:
        self._producer = {name: node for node in self.nodes for name in node.output if name}
        self._consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in {*node.input, *_subgraph_inputs(node)}:
                if name:
                    self._consumers.setdefault(name, []).append(node)

    # ----------------------------------------------------------------------------------------
    # Reading

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node computing ``name`` (None for graph inputs, initializers and "")."""
        return self._producer.get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return self._consumers.get(name, [])

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``, when exactly one does and it is no graph output."""
        readers = self.consumers(name)
        if len(readers) != 1 or name in self._outputs:
            return None
        return readers[0]

    def opset(self, domain: str = "") -> int | None:
        for entry in self.model.opset_import:
            if entry.domain == domain or (not domain and entry.domain == "ai.onnx"):
                return int(entry.version)
        return None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer (not also a graph input) or a Constant node's output."""
        if name in self._initializers:
            return numpy_helper.to_array(self._initializers[name])
        node = self.producer(name)
        if node is None or node.op_type != "Constant" or node.domain not in ONNX_DOMAINS:
            return None
        attribute = node.attribute[0]
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
        if isinstance(value, int | float | list):
            return np.asarray(value)
        return None  # sparse tensors and strings hold no scale or mask

    def scalar(self, name: str) -> float | None:
        """A one-element floating constant's value (shape [] or [1, …, 1])."""
        value = self.constant(name)
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            return None
        return float(value.reshape(()))

    def elem_type(self, name: str) -> int | None:
        value_type = self._types.get(name)
        if value_type is None or not value_type.HasField("tensor_type"):
            return None
        return int(value_type.tensor_type.elem_type) or None

    def shape(self, name: str) -> list[Dim] | None:
        """The inferred shape of ``name`` (None when even the rank is unknown)."""
        if name in self._initializers:
            return [int(d) for d in self._initializers[name].dims]
        value_type = self._types.get(name)
        if value_type is None or not value_type.tensor_type.HasField("shape"):
            return None
        return [
            int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_type.tensor_type.shape.dim
        ]

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    # ----------------------------------------------------------------------------------------
    # Editing

    def fresh(self, base: str) -> str:
        """A value or node name not yet used in the graph."""
        name, counter = base, 0
        while name in self._taken:
            counter += 1
            name = f"{base}_{counter}"
        self._taken.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        *,
        name: str,
        domain: str = "",
        **attributes: Any,
    ) -> onnx.NodeProto:
        """A new node named after ``name``; ``outputs`` as a count gets fresh output names."""
        node_name = self.fresh(name)
        names = (
            [self.fresh(f"{node_name}_out{i}") for i in range(outputs)]
            if isinstance(outputs, int)
            else list(outputs)
        )
        return onnx.helper.make_node(
            op_type, list(inputs), names, name=node_name, domain=domain, **attributes
        )

    def replace(self, old: onnx.NodeProto, new: Iterable[onnx.NodeProto]) -> None:
        """Put ``new`` where ``old`` was (its inputs exist there, as ``old``'s did), then drop
        the nodes that only fed ``old`` and are read by nothing else now."""
        at = self.nodes.index(old)
        self.nodes[at : at + 1] = list(new)
        self._index()
        self._drop_unused(old.input)

    def _drop_unused(self, names: Iterable[str]) -> None:
        pending = [name for name in names if name]
        while pending:
            name = pending.pop()
            if self.consumers(name) or name in self._outputs:
                continue
            node = self.producer(name)
            if node is None:
                self._dropped.add(name)  # an initializer (or input) nothing reads any more
                continue
            if any(self.consumers(out) or out in self._outputs for out in node.output):
                continue
            self.nodes.remove(node)
            self._index()
            pending.extend(node.input)

    def finish(self) -> onnx.ModelProto:
        """Write the nodes back, dropping the initializers and value infos left unused."""
        graph = self.model.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        unused = {n for n in self._dropped if n in self._initializers and not self.consumers(n)}
        kept_initializers = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept_initializers)
        live = {name for node in self.nodes for name in node.output}
        kept_infos = [v for v in graph.value_info if v.name in live]
        del graph.value_info[:]
        graph.value_info.extend(kept_infos)
        return self.model


def label(node: onnx.NodeProto) -> str:
    """How the report names ``node``: its name, or what it computes when it has none."""
    return node.name or f"{node.op_type} -> {node.output[0]}"


def same_dim(a: Dim, b: Dim) -> bool:
    """Whether two dimensions are provably equal (the same size, or the same symbol)."""
    return a is not None and a == b


def broadcasts_into(small: Sequence[Dim] | None, large: Sequence[Dim] | None) -> bool:
    """Whether ``small`` provably broadcasts to ``large`` without growing it (numpy rules)."""
    if small is None or large is None or len(small) > len(large):
        return False
    # Aligned on the right; the leading axes ``small`` lacks are free.
    pairs = zip(reversed(small), reversed(large[len(large) - len(small) :]), strict=True)
    return all(dim == 1 or same_dim(dim, target) for dim, target in pairs)
