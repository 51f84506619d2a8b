"""The judge's graph: the TorchScript export of the score-token logit lens, the LAGER head
appended and checked, and its parity with torch (each left-padded row against its prompt run
alone; the head against :mod:`surety_serving.kernels.reference`). docs/judge.md describes the
checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surety_serving.export.common import ONNX_OPSET, check_graph_io, stamp_metadata
from surety_serving.judge.graph import Lens, append_lager_head, final_norm, layer_weights
from surety_serving.judge.prompt import EncodedPrompts
from surety_serving.models.quiet_export import quiet_exporter

if TYPE_CHECKING:
    import torch

__all__ = [
    "INPUTS",
    "LOGIT_LENS_TOLERANCE",
    "OUTPUTS",
    "PARITY_TOLERANCE",
    "export_onnx",
    "feeds",
    "finish_graph",
    "parity",
]

INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("layer_logits", "expected_score", "score_probabilities", "layer_scores")
#: |ONNX − torch| / max(1, |torch|): absolute below 1, relative above (raw-lens logits of deep
#: layers reach the hundreds). Above float32 rounding through every layer, far below what a
#: graph that mishandles a mask or a position is off by (docs/judge.md: the measured errors).
PARITY_TOLERANCE = 1e-3
#: max |lm_head(final hidden state) − logits| over the vocabulary, both in torch: rounding for a
#: model whose logits are lm_head's output; a model that scales or soft-caps its logits is off by
#: far more, and its logit lens would not hold (docs/judge.md).
LOGIT_LENS_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Graph


def export_onnx(module: torch.nn.Module, example: EncodedPrompts, path: Path) -> None:
    import torch

    dynamic = {0: "batch", 1: "sequence"}
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module,
            (torch.from_numpy(example.input_ids), torch.from_numpy(example.attention_mask)),
            str(path),
            dynamo=False,
            input_names=list(INPUTS),
            output_names=[OUTPUTS[0]],
            dynamic_axes={INPUTS[0]: dynamic, INPUTS[1]: dynamic, OUTPUTS[0]: {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def finish_graph(path: Path, score_values: Sequence[float], metadata: Mapping[str, str]) -> None:
    """Append the LAGER head, check inputs and outputs, stamp metadata."""
    import onnx

    model = onnx.load(str(path))
    append_lager_head(model, score_values)
    check_graph_io(model, INPUTS, OUTPUTS)
    stamp_metadata(model, metadata)
    onnx.save(model, str(path))


# --------------------------------------------------------------------------------------------
# Checks


@dataclass(frozen=True)
class _Reference:
    """One prompt run alone (no padding) through the torch model."""

    layer_logits: np.ndarray  # [L+1, K]
    lens_error: float  # max |lm_head(final state) − the model's logits| over the vocabulary
    score_mass: float  # the score tokens' share of the next-token distribution
    greedy_is_score: bool  # whether the model's argmax next token is a score token


def _reference(model: Any, ids: Sequence[int], token_ids: Sequence[int], lens: Lens) -> _Reference:
    """LAGER's layer logits of one unpadded prompt, computed the plain way: lm_head on each
    layer's last hidden state (through the final norm for ``normed``), and the model's own
    logits for the final entry."""
    import torch

    norm = final_norm(model.get_decoder())
    head = model.get_output_embeddings()
    rows = list(token_ids)
    with torch.no_grad():
        output = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
        logits = output.logits[0, -1]
        layers = []
        for state in output.hidden_states[:-1]:
            last = state[0, -1]
            if lens == "normed":
                last = norm(last)
            layers.append(head(last)[rows])
        layers.append(logits[rows])
        final = norm(output.hidden_states[-1][0, -1])
        # transformers 5 records hidden_states[-1] before the final norm, 4.x after it: either
        # way, one of the two must reproduce the model's logits through lm_head.
        lens_error = min(
            float((head(final) - logits).abs().max()),
            float((head(output.hidden_states[-1][0, -1]) - logits).abs().max()),
        )
        probabilities = torch.softmax(logits, dim=-1)
    return _Reference(
        layer_logits=torch.stack(layers).numpy(),
        lens_error=lens_error,
        score_mass=float(probabilities[rows].sum()),
        greedy_is_score=int(logits.argmax()) in rows,
    )


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))


def parity(
    model: Any,
    session: Any,
    batches: Sequence[EncodedPrompts],
    token_ids: Sequence[int],
    score_values: Sequence[float],
    lens: Lens,
) -> dict[str, Any]:
    """ORT on left-padded batches against each row's prompt run alone in torch; the head's
    outputs against :func:`surety_serving.kernels.reference.expected_score` on ORT's own layer
    logits."""
    from surety_serving.kernels.reference import expected_score

    worst = {name: 0.0 for name in OUTPUTS}
    references: dict[tuple[int, ...], _Reference] = {}
    for batch in batches:
        got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds(batch)), strict=True))
        for row in range(batch.input_ids.shape[0]):
            ids = tuple(int(i) for i in batch.input_ids[row][batch.attention_mask[row] == 1])
            if ids not in references:
                references[ids] = _reference(model, ids, token_ids, lens)
            want = references[ids].layer_logits
            error = _relative_error(got[OUTPUTS[0]][row], want)
            worst[OUTPUTS[0]] = max(worst[OUTPUTS[0]], error)
        logits = got[OUTPUTS[0]]
        weights = layer_weights(logits.shape[1])
        score, probabilities = expected_score(logits, weights, score_values)
        per_layer = np.exp(logits - logits.max(axis=-1, keepdims=True))
        per_layer /= per_layer.sum(axis=-1, keepdims=True)
        for name, want in (
            (OUTPUTS[1], score),
            (OUTPUTS[2], probabilities),
            (OUTPUTS[3], per_layer @ np.asarray(score_values, dtype=np.float64)),
        ):
            worst[name] = max(worst[name], _relative_error(got[name], want))
    refs = list(references.values())
    return {
        "max_error": max(worst.values()),
        "per_output": worst,
        "logit_lens_error": max(r.lens_error for r in refs),
        "prompts": len(refs),
        "score_token_mass": [round(r.score_mass, 4) for r in refs],
        "greedy_is_score_token": sum(r.greedy_is_score for r in refs) / len(refs),
    }


def feeds(batch: EncodedPrompts) -> dict[str, np.ndarray]:
    return {INPUTS[0]: batch.input_ids, INPUTS[1]: batch.attention_mask}
