"""LLM-judge export: a local Hugging Face causal LM (a folder, or a ``.gguf`` file) → a servable
ONNX judge entry: the score-token logit lens of every layer into ``ai.surety::ExpectedScore``,
checked against torch. docs/judge.md describes the graph, its checks and the choices made."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surety_serving.export.common import (
    EXPORT_FORMAT,
    MODEL_FILE,
    ONNX_OPSET,
    TEXT_BATCHING,
    TOKENIZER_FILE,
    ExportError,
    optimize_graph,
    ort_session,
    sha256_file,
    timed,
    write_config,
    write_export_metadata,
)
from surety_serving.export.judge_graph import (
    INPUTS,
    LOGIT_LENS_TOLERANCE,
    OUTPUTS,
    PARITY_TOLERANCE,
    export_onnx,
    feeds,
    finish_graph,
)
from surety_serving.export.judge_graph import parity as onnx_parity
from surety_serving.judge.graph import (
    EXPECTED_SCORE_OP,
    Lens,
    build_score_lens,
)
from surety_serving.judge.prompt import (
    DEFAULT_ASSISTANT_PREFIX,
    EncodedPrompts,
    PromptTemplate,
    encode_prompts,
    render_chat_template,
)
from surety_serving.optimize.options import OptimizeOptions

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_SCORE_TOKENS",
    "DEFAULT_USER_TEMPLATE",
    "JudgeExport",
    "JudgePrompt",
    "ScoreTokenError",
    "export_judge",
    "judge_repository_config",
    "validate_score_tokens",
]

DEFAULT_MAX_PROMPT_TOKENS = 1024
DEFAULT_FIELDS = ("text_a", "text_b")
DEFAULT_SCORE_TOKENS = ("1", "2", "3", "4", "5")
DEFAULT_SYSTEM = "You are a careful, consistent annotator."
DEFAULT_USER_TEMPLATE = (
    "Rate how similar in meaning the two sentences are, from 1 (completely different) to 5 "
    "(the same meaning).\n\nSentence A: {text_a}\nSentence B: {text_b}\n\n"
    "Answer with a single digit from 1 to 5."
)
#: Field values the parity check runs when none are given: different lengths, so the batch is
#: really left padded.
_SAMPLE_TEXTS = (
    "A man is playing a guitar.",
    "Two dogs run across a wide green field, chasing a red ball that a child has thrown.",
    "Stocks fell.",
    "The committee postponed its vote on the new budget until the next session in spring.",
)

log = logging.getLogger(__name__)


class ScoreTokenError(ExportError, ValueError):
    """A score string is not one token the model can emit after the prompt."""


@dataclass(frozen=True)
class JudgePrompt:
    """What the judge is asked: named fields, the user template naming them, and the score
    scale. ``system`` None keeps the chat template's default system message."""

    fields: tuple[str, ...] = DEFAULT_FIELDS
    user: str = DEFAULT_USER_TEMPLATE
    system: str | None = DEFAULT_SYSTEM
    assistant_prefix: str = DEFAULT_ASSISTANT_PREFIX
    score_tokens: tuple[str, ...] = DEFAULT_SCORE_TOKENS
    # None: the score tokens read as numbers ("1" → 1.0).
    score_values: tuple[float, ...] | None = None
    # Fields cut in the middle, in this order, when a prompt is too long; None: all fields.
    truncate: tuple[str, ...] | None = None
    # None: DEFAULT_MAX_PROMPT_TOKENS, or the model's positions if it has fewer.
    max_prompt_tokens: int | None = None

    def values(self) -> tuple[float, ...]:
        """The score values: given, or the score tokens as numbers."""
        if self.score_values is not None:
            if len(self.score_values) != len(self.score_tokens):
                raise ValueError(
                    f"{len(self.score_values)} score values for {len(self.score_tokens)} tokens"
                )
            return self.score_values
        try:
            return tuple(float(token) for token in self.score_tokens)
        except ValueError:
            raise ValueError(
                f"score tokens {list(self.score_tokens)} are not numbers: give score values"
            ) from None

    def truncated_fields(self) -> tuple[str, ...]:
        return self.fields if self.truncate is None else self.truncate


@dataclass(frozen=True)
class JudgeExport:
    """What :func:`export_judge` built and how well it matches torch."""

    name: str
    version: int
    model_root: Path
    version_dir: Path
    model_path: Path
    tokenizer_path: Path
    template: PromptTemplate
    score_token_ids: tuple[int, ...]
    num_layers: int
    parity_max_error: float | None
    logit_lens_error: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Model and tokens


def _offline() -> None:
    # The model must be a complete local folder or file: nothing is fetched from a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_causal_lm(source: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a Hugging Face folder or a ``.gguf`` file (dequantised to
    float32): the model in eval mode with eager attention, whose explicit additive mask is
    what the exported graph's left padding relies on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _offline()
    source = Path(source)
    if source.is_file() and source.suffix == ".gguf":
        directory, extra = source.parent, {"gguf_file": source.name}
    elif (source / "config.json").is_file():
        directory, extra = source, {}
    else:
        raise FileNotFoundError(f"{source} is neither a .gguf file nor a folder with config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=torch.float32,
            attn_implementation="eager",
            local_files_only=True,
            **extra,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **extra)
    # A dequantised GGUF model still names its quantizer; the weights are plain float32 now.
    model.hf_quantizer = None
    return model.eval(), tokenizer


def _token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def validate_score_tokens(
    tokenizer: Tokenizer, template: PromptTemplate, score_tokens: Sequence[str], vocab_size: int
) -> tuple[int, ...]:
    """The single token id of each score string, checked to be the id the model emits there.

    A score string must (1) encode to exactly one token alone, and (2) be that same token when
    it follows the prompt's tail (``suffix + assistant_prefix``): in SentencePiece vocabularies
    "5" alone and "▁5" after a space differ, and a trailing space in the prefix can merge with
    the digit. Ids must be distinct and inside lm_head's rows.
    """
    problems = []
    ids: list[int] = []
    tail = _token_ids(tokenizer, template.assistant_tail)
    for token in score_tokens:
        alone = _token_ids(tokenizer, token)
        if len(alone) != 1:
            problems.append(f"score token {token!r} is {len(alone)} tokens {alone}, not one")
            continue
        in_context = _token_ids(tokenizer, template.assistant_tail + token)
        if in_context != [*tail, alone[0]]:
            problems.append(
                f"score token {token!r} (id {alone[0]}) after {template.assistant_prefix!r} "
                f"tokenizes as {in_context[len(tail) - 1 :]}, not as itself: the model would "
                "not emit that id there (change the assistant prefix or the score tokens)"
            )
            continue
        if not 0 <= alone[0] < vocab_size:
            problems.append(f"score token {token!r} has id {alone[0]} outside lm_head's rows")
            continue
        ids.append(alone[0])
    if len(set(ids)) != len(ids):
        problems.append(f"score tokens {list(score_tokens)} share ids {ids}")
    if problems:
        raise ScoreTokenError("; ".join(problems))
    return tuple(ids)


def _pad_token_id(hf_tokenizer: Any) -> int:
    # Masked out, so any valid id serves; the tokenizer's own pad, else its end of sequence.
    for candidate in (hf_tokenizer.pad_token_id, hf_tokenizer.eos_token_id, 0):
        if isinstance(candidate, int):
            return candidate
    return 0


def sample_rows(fields: Sequence[str]) -> list[dict[str, str]]:
    """Field values for the parity check: each row a different length."""
    count = len(_SAMPLE_TEXTS)
    return [
        {name: _SAMPLE_TEXTS[(row + shift) % count] for shift, name in enumerate(fields)}
        for row in range(count)
    ]


# --------------------------------------------------------------------------------------------
# The export


def export_judge(
    source: Path | None,
    out_dir: Path,
    name: str,
    *,
    prompt: JudgePrompt | None = None,
    lens: Lens = "raw",
    version: int = 1,
    check_parity: bool = True,
    parity_tolerance: float = PARITY_TOLERANCE,
    parity_rows: Sequence[Mapping[str, str]] | None = None,
    optimize: OptimizeOptions | None = None,
) -> JudgeExport:
    """Export the causal LM at ``source`` (None: SmolLM2-135M-Instruct, fetched and cached) as
    the judge ``<out_dir>/<name>`` (see the module docstring); raises :class:`ExportError` when
    a check fails and :class:`ScoreTokenError` for unusable score tokens."""
    import torch

    from surety_serving.judge.source import fetch_smollm2

    prompt = prompt or JudgePrompt()
    values = prompt.values()
    if lens not in ("raw", "normed"):
        raise ValueError(f"lens must be raw or normed, got {lens!r}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with timed(seconds, "load"):
        if source is None:
            source = fetch_smollm2()
        log.info("loading %s", source)
        model, hf_tokenizer = load_causal_lm(source)
    # The weights, copied before the export touches the model: the parity reference is a
    # fresh instance holding them (a module that went through torch.onnx.export is not a
    # trustworthy reference: the export may leave it changed).
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    tokenizer = hf_tokenizer.backend_tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()
    template = render_chat_template(
        hf_tokenizer,
        prompt.fields,
        prompt.user,
        system=prompt.system,
        assistant_prefix=prompt.assistant_prefix,
    )
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    token_ids = validate_score_tokens(tokenizer, template, prompt.score_tokens, vocab_size)
    log.info("score tokens %s → ids %s", list(prompt.score_tokens), list(token_ids))
    pad_token_id = _pad_token_id(hf_tokenizer)
    config = model.config
    num_layers = int(config.num_hidden_layers)
    truncate = prompt.truncated_fields()

    positions = int(getattr(config, "max_position_embeddings", DEFAULT_MAX_PROMPT_TOKENS))
    max_tokens = prompt.max_prompt_tokens or min(DEFAULT_MAX_PROMPT_TOKENS, positions)
    if max_tokens > positions:
        raise ValueError(
            f"max_prompt_tokens {max_tokens} exceeds the model's {positions} positions"
        )

    def encode(rows: Sequence[Mapping[str, str]]) -> EncodedPrompts:
        return encode_prompts(
            tokenizer,
            template,
            rows,
            max_prompt_tokens=max_tokens,
            truncate=truncate,
            pad_token_id=pad_token_id,
        )

    # Every prompt must fit once its truncatable fields are cut: the template alone must fit.
    encode([dict.fromkeys(prompt.fields, "")])
    rows = list(parity_rows) if parity_rows is not None else sample_rows(prompt.fields)
    # The whole set in one batch, then two smaller batches of other sizes and lengths: neither
    # axis may have been fixed by the tracer.
    batches = [encode(rows), encode(rows[1:2]), encode(rows[::-1][:3])]

    model_root = Path(out_dir) / name
    version_dir = model_root / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / MODEL_FILE
    tokenizer_path = version_dir / TOKENIZER_FILE
    partial = model_path.with_suffix(".onnx.partial")
    log.info("exporting %d layers + embeddings, %s lens, to %s", num_layers, lens, model_path)
    with timed(seconds, "export"):
        module = build_score_lens(model, token_ids, lens)
        export_onnx(module, encode(rows[:2]), partial)
        finish_graph(
            partial,
            values,
            {
                "surety.task": "judge",
                "surety.lens": lens,
                "surety.score_tokens": json.dumps(list(prompt.score_tokens)),
                "surety.score_token_ids": json.dumps(list(token_ids)),
            },
        )
        partial.replace(model_path)
        tokenizer.save(str(tokenizer_path))
    del module, model

    parity: dict[str, Any] | None = None
    if check_parity:
        from transformers import AutoModelForCausalLM

        with timed(seconds, "parity"):
            auto: Any = AutoModelForCausalLM  # from_config is untyped
            reference = auto.from_config(config, attn_implementation="eager", dtype=torch.float32)
            reference.load_state_dict(state)
            session = ort_session(model_path)
            parity = onnx_parity(reference.eval(), session, batches, token_ids, values, lens)
        log.info(
            f"parity ONNX vs torch: max error {parity['max_error']:.3g} (tolerance "
            f"{parity_tolerance:g}); logit lens {parity['logit_lens_error']:.3g}"
        )
        if not parity["max_error"] <= parity_tolerance:
            raise ExportError(
                f"ONNX and torch differ by {parity['max_error']:.3g} > {parity_tolerance:g} "
                f"({parity['per_output']}) in {model_path}"
            )
        if not parity["logit_lens_error"] <= LOGIT_LENS_TOLERANCE:
            raise ExportError(
                f"lm_head on the final hidden state differs from the model's logits by "
                f"{parity['logit_lens_error']:.3g}: the logit lens does not hold for this model "
                "(a logit scale or soft-capping?)"
            )
    optimized: dict[str, Any] | None = None
    if optimize is not None and optimize.attention != "none":
        # The pass takes the judge's additive mask (causal And key padding) as SparseAttention's
        # causal=1 plus the key-padding row; a graph that let queries see later keys, or read
        # padding, drifts past the tolerance on the left-padded batches and is never written.
        with timed(seconds, "optimize"):
            optimized = optimize_graph(
                model_path, [feeds(b) for b in batches], optimize, require_attention=True
            )

    truncated = int(batches[0].truncated.sum())
    seconds["total"] = round(time.perf_counter() - started, 3)
    k = len(token_ids)
    metadata: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "name": name,
        "version": version,
        "task": "judge",
        "inputs": [{"name": f, "datatype": "BYTES", "shape": [-1]} for f in prompt.fields],
        "outputs": [
            {"name": OUTPUTS[0], "datatype": "FP32", "shape": [-1, num_layers + 1, k]},
            {"name": OUTPUTS[1], "datatype": "FP32", "shape": [-1]},
            {"name": OUTPUTS[2], "datatype": "FP32", "shape": [-1, k]},
            {"name": OUTPUTS[3], "datatype": "FP32", "shape": [-1, num_layers + 1]},
        ],
        "model_inputs": [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in INPUTS],
        "judge": {
            "fields": list(prompt.fields),
            "prompt": {
                "system": template.system,
                "user": template.user,
                "prefix": template.prefix,
                "suffix": template.suffix,
                "assistant_prefix": template.assistant_prefix,
            },
            "truncate": list(truncate),
            "max_prompt_tokens": max_tokens,
            "score_tokens": list(prompt.score_tokens),
            "score_token_ids": list(token_ids),
            "score_values": list(values),
            "lens": lens,
            "num_layers": num_layers,
            "tokenizer": TOKENIZER_FILE,
            "pad_token_id": pad_token_id,
        },
        "layer_weights": {"initializer": "layer_weights", "fitted": False, "value": "1/(L+1)"},
        "head": {"op": f"ai.surety::{EXPECTED_SCORE_OP}", "opset": 1},
        "onnx_opset": ONNX_OPSET,
        "source": {
            "path": str(source),
            "model_type": str(config.model_type),
            "num_layers": num_layers,
            "vocab_size": vocab_size,
        },
        "parity": {
            **(parity or {}),
            "error": "|onnx - torch| / max(1, |torch|); torch: each prompt alone, unpadded",
            "tolerance": parity_tolerance,
            "truncated_tokens_in_samples": truncated,
        },
        "files": {MODEL_FILE: sha256_file(model_path), TOKENIZER_FILE: sha256_file(tokenizer_path)},
        "seconds": seconds,
    }
    if optimized is not None:
        metadata["optimize"] = optimized
    write_export_metadata(model_root, metadata)
    write_judge_config(model_root, metadata)
    log.info("wrote %s in %.1f s", model_root, seconds["total"])
    return JudgeExport(
        name=name,
        version=version,
        model_root=model_root,
        version_dir=version_dir,
        model_path=model_path,
        tokenizer_path=tokenizer_path,
        template=template,
        score_token_ids=token_ids,
        num_layers=num_layers,
        parity_max_error=None if parity is None else parity["max_error"],
        logit_lens_error=None if parity is None else parity["logit_lens_error"],
        seconds=seconds,
        metadata=metadata,
    )


def judge_repository_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's config.yaml from its export.json: the fields come in as BYTES inputs, the
    ``judge`` section says how they become the graph's token feeds."""
    judge = metadata["judge"]
    source = metadata["source"]
    return {
        "task": "judge",
        "description": (
            f"{source['model_type']} causal LM ({source['num_layers']} layers) as an LLM judge: "
            f"LAGER expected score over {judge['score_tokens']} ({judge['lens']} logit lens)"
        ),
        "inputs": metadata["inputs"],
        "outputs": metadata["outputs"],
        "judge": dict(judge),
        # A prompt costs a full forward pass: smaller batches than the classifiers'.
        "batching": {**TEXT_BATCHING, "max_batch_size": 8},
        **({"optimize": metadata["optimize"]["options"]} if "optimize" in metadata else {}),
    }


def write_judge_config(model_root: Path, metadata: Mapping[str, Any]) -> Path:
    """Validate (as the server will) and write ``<model_root>/config.yaml``."""
    return write_config(model_root, judge_repository_config(metadata))
