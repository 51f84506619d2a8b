"""The judge graph: a causal LM cut down to its score-token logit lens, plus LAGER's head.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = [
    "EXPECTED_SCORE_OP",
    "LAYER_WEIGHTS",
    "SCORE_VALUES",
    "Lens",
    "append_lager_head",
    "build_score_lens",
    "final_norm",
    "layer_weights",
    "set_layer_weights",
]

Lens = Literal["raw", "normed"]
EXPECTED_SCORE_OP = "ExpectedScore"
LAYER_WEIGHTS = "layer_weights"
SCORE_VALUES = "score_values"
#: The batch axis' name in the exported graph (the torch exporter's dynamic_axes use it too).
BATCH_AXIS = "batch"


def final_norm(backbone: Any) -> Any:
    """The final norm of a decoder (the module lm_head's input passes through last)."""
    # Llama, Mistral, Qwen2, Gemma name it ``norm``; GPT-NeoX and Phi ``final_layernorm``.
    for name in ("norm", "final_layernorm", "final_layer_norm", "ln_f"):
        module = getattr(backbone, name, None)
        if module is not None:
            return module
    raise ValueError(f"{type(backbone).__name__} has no final norm this exporter knows")


def _padded_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, S, S] mask: query i sees key j ≤ i where key j is not padding.

    Built from the mask alone (cumsum of ones for the positions), so a traced graph keeps the
    sequence length dynamic; given 4-D, transformers uses it as is instead of building its own.
    """
    import torch

    index = torch.ones_like(attention_mask[0]).cumsum(0)
    causal = index.unsqueeze(0) <= index.unsqueeze(1)
    allowed = causal.unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(2)
    # The dtype's minimum, not -inf: a padding query sees no key at all, and a row of -inf
    # would make NaN (its output is never read, but NaN could spread through later ops).
    return (~allowed).to(dtype) * torch.finfo(dtype).min


def build_score_lens(model: Any, token_ids: Sequence[int], lens: Lens = "raw") -> torch.nn.Module:
    """The exportable logit-lens module of a causal LM (see the module docstring).

    ``model`` is a transformers ``*ForCausalLM`` in eval mode with eager attention; its
    ``lm_head`` must be a bias-free linear map (the export's logit-lens check compares the last
    entry with the model's own logits).
    """
    import torch

    backbone = model.get_decoder()
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("lm_head has a bias: the score-token lens assumes a bias-free lm_head")
    num_layers = int(model.config.num_hidden_layers)
    norm = final_norm(backbone) if lens == "normed" else None

    class ScoreLens(torch.nn.Module):
        unembed: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.norm = norm
            # The K rows of lm_head, transposed to [D, K]: K·D multiply-adds per layer.
            self.register_buffer("unembed", head.weight.detach()[list(token_ids)].T.clone())

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Left padding: positions count real tokens only, so a padded prompt gets the same
            # rotary positions as it does alone.
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            output = self.backbone(
                input_ids=input_ids,
                attention_mask=_padded_causal_mask(attention_mask, self.unembed.dtype),
                position_ids=positions,
                output_hidden_states=True,
                use_cache=False,
            )
            hidden = output.hidden_states
            if len(hidden) != num_layers + 1:
                raise ValueError(f"{len(hidden)} hidden states for {num_layers} layers")
            # The last entry is the post-norm state lm_head reads (transformers versions differ
            # on whether hidden_states[-1] is normed; last_hidden_state always is).
            states = [h[:, -1, :] for h in hidden[:-1]]
            states.append(output.last_hidden_state[:, -1, :])
            stacked = torch.stack(states, dim=1)
            if self.norm is not None:
                stacked = torch.cat([self.norm(stacked[:, :-1]), stacked[:, -1:]], dim=1)
            result: torch.Tensor = stacked @ self.unembed
            return result

    return ScoreLens().eval()


def layer_weights(num_hidden_states: int) -> npt.NDArray[np.float32]:
    """LAGER's untuned weights: the mean of the L+1 layers' logits, 1/(L+1) each (Σw = 1 keeps
    the aggregated logits as sharp as one layer's)."""
    return np.full(num_hidden_states, 1.0 / num_hidden_states, dtype=np.float32)


def append_lager_head(
    model: onnx.ModelProto,
    score_values: Sequence[float],
    *,
    layer_logits: str = "layer_logits",
    expected_score: str = "expected_score",
    score_probabilities: str = "score_probabilities",
    layer_scores: str = "layer_scores",
) -> None:
    """Append ExpectedScore and the per-layer scores to ``model`` in place (see the module
    docstring); the layer weights start uniform. ``layer_logits`` must be an output with a
    static [B, L+1, K] shape whose K matches ``score_values``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from surety_serving import kernels

    graph = model.graph
    output = next((o for o in graph.output if o.name == layer_logits), None)
    if output is None:
        raise ValueError(f"the graph has no output {layer_logits!r}")
    dims = [d.dim_value for d in output.type.tensor_type.shape.dim]
    if len(dims) != 3 or not (dims[1] and dims[2]) or dims[2] != len(score_values):
        raise ValueError(
            f"{layer_logits} has shape {dims}, not [B, L+1, K] with K = {len(score_values)}"
        )
    hidden_states, k = dims[1], dims[2]
    values = np.asarray(score_values, dtype=np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(layer_weights(hidden_states), LAYER_WEIGHTS),
            numpy_helper.from_array(values, SCORE_VALUES),
        ]
    )
    per_layer = f"{layer_logits}_probabilities"
    graph.node.extend(
        [
            helper.make_node(
                EXPECTED_SCORE_OP,
                [layer_logits, LAYER_WEIGHTS, SCORE_VALUES],
                [expected_score, score_probabilities],
                name="lager_expected_score",
                domain=kernels.DOMAIN,
            ),
            # Per-layer expected scores: what each layer alone would answer (for inspection
            # and for fitting weights without re-running the model).
            helper.make_node("Softmax", [layer_logits], [per_layer], axis=-1, name="layer_softmax"),
            helper.make_node("MatMul", [per_layer, SCORE_VALUES], [layer_scores], name="layer_ev"),
        ]
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info(expected_score, TensorProto.FLOAT, [BATCH_AXIS]),
            helper.make_tensor_value_info(score_probabilities, TensorProto.FLOAT, [BATCH_AXIS, k]),
            helper.make_tensor_value_info(
                layer_scores, TensorProto.FLOAT, [BATCH_AXIS, hidden_states]
            ),
        ]
    )
    if not any(o.domain == kernels.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(kernels.DOMAIN, kernels.OPSET_VERSION))
    onnx.checker.check_model(model)


#: Nodes and initialisers between ``layer_logits`` and the head carry this prefix: the centring
#: over the K scores and the constant layer that set_layer_weights puts in (and takes out).
HEAD_INPUT = "lager_input/"


def set_layer_weights(
    model_path: Path,
    weights: npt.ArrayLike,
    *,
    center: bool = False,
    constant_layer: bool = False,
) -> None:
    """Replace the ``layer_weights`` initialiser of the judge graph at ``model_path`` with
    ``weights``, applied as given (not normalised): [L+1] (one per layer) or [L+1, K] (one per
    layer and score token), or with ``constant_layer`` [L+2, K], whose last row is a per-score
    bias. The file is replaced atomically, so a server never reads half of it.

    ``center``: ExpectedScore reads each layer's logits minus their mean over the K scores
    (what the [L, K] fitters of surety_serving.judge.fitting fit on; the softmax makes it a no-op
    for
    [L+1] weights). ``constant_layer``: a layer of ones is appended (after centring), so that
    the last row of weights is a bias (the op has no bias input). The graph's ``layer_logits``
    output stays as the model gives it, and so do the per-layer scores.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(model_path)
    model = onnx.load(str(path))
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    if LAYER_WEIGHTS not in tensors or SCORE_VALUES not in tensors:
        raise ValueError(f"{path} has no {LAYER_WEIGHTS} and {SCORE_VALUES} initialisers")
    head = next(n for n in graph.node if n.op_type == EXPECTED_SCORE_OP)
    ours = [n for n in graph.node if n.name.startswith(HEAD_INPUT)]
    source = ours[0].input[0] if ours else head.input[0]
    output = next(o for o in graph.output if o.name == source)
    hidden_states = output.type.tensor_type.shape.dim[1].dim_value + int(constant_layer)
    k = int(tensors[SCORE_VALUES].dims[0])
    array = np.asarray(weights, dtype=np.float32)
    allowed = [(hidden_states, k)] if constant_layer else [(hidden_states,), (hidden_states, k)]
    if array.shape not in allowed:
        raise ValueError(
            f"layer weights of shape {list(array.shape)}: expected "
            f"{' or '.join(str(list(shape)) for shape in allowed)} (L+1 hidden states"
            f"{', a constant layer' if constant_layer else ''}, K score tokens)"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("layer weights must be finite")
    tensors[LAYER_WEIGHTS].CopyFrom(numpy_helper.from_array(array, LAYER_WEIGHTS))
    for node in ours:
        graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name.startswith(HEAD_INPUT)]:
        graph.initializer.remove(tensor)
    head.input[0] = _head_input(model, source, list(graph.node).index(head), center, constant_layer)
    onnx.checker.check_model(model)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)


def _head_input(
    model: onnx.ModelProto, source: str, index: int, center: bool, constant_layer: bool
) -> str:
    """Insert at ``index`` the nodes that turn ``source`` [B, L+1, K] into the head's input;
    returns its name."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    constants: dict[str, npt.NDArray[Any]] = {}
    current = source
    if center:
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        mean, centred = f"{HEAD_INPUT}mean", f"{HEAD_INPUT}centred"
        if opset < 18:  # axes became an input in opset 18
            nodes.append(
                helper.make_node("ReduceMean", [current], [mean], axes=[-1], keepdims=1, name=mean)
            )
        else:
            constants[f"{HEAD_INPUT}last_axis"] = np.array([-1], np.int64)
            nodes.append(
                helper.make_node(
                    "ReduceMean", [current, f"{HEAD_INPUT}last_axis"], [mean], keepdims=1, name=mean
                )
            )
        nodes.append(helper.make_node("Sub", [current, mean], [centred], name=centred))
        current = centred
    if constant_layer:
        # Ones shaped like one layer, [B, 1, K]: the first layer's shape, expanded from 1.0.
        first, shape = f"{HEAD_INPUT}first_layer", f"{HEAD_INPUT}layer_shape"
        ones, appended = f"{HEAD_INPUT}ones", f"{HEAD_INPUT}with_constant_layer"
        constants.update(
            {
                f"{HEAD_INPUT}zero": np.array([0], np.int64),
                f"{HEAD_INPUT}one": np.array([1], np.int64),
                f"{HEAD_INPUT}one_f": np.array([1.0], np.float32),
            }
        )
        zero, one = f"{HEAD_INPUT}zero", f"{HEAD_INPUT}one"
        nodes += [
            helper.make_node("Slice", [current, zero, one, one], [first], name=first),
            helper.make_node("Shape", [first], [shape], name=shape),
            helper.make_node("Expand", [f"{HEAD_INPUT}one_f", shape], [ones], name=ones),
            helper.make_node("Concat", [current, ones], [appended], axis=1, name=appended),
        ]
        current = appended
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in constants.items())
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    return current
