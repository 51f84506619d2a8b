"""Input decoding, one decoder per model input: request tensors in, validated feeds out.

Decoding happens before a request joins a batch, so anything it rejects fails that request alone.
Decoders are objects built once per model version at load time (``build_decoders``), so a text
decoder holds that version's tokenizer and never reads tokenizer.json during a request. The
``DECODERS`` table maps config.yaml's ``decoder:`` names to their factories.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from surety_serving.errors import ConfigError, InvalidInputError
from surety_serving.protocol.types import Parameters, Tensor
from surety_serving.runtime.config import InputSpec, ModelConfig
from surety_serving.runtime.session import Feeds

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

#: A text is first tokenized up to this many characters per token of ``max_length`` (prose
#: runs at 4 to 5 per token), cut at the next cut point: one pass for ordinary text.
CHARS_PER_TOKEN = 8
#: How much a text's character budget grows while its cut holds too few tokens.
BUDGET_GROWTH = 4
#: Characters below this code point (the Basic Multilingual Plane) are tested as cut points;
#: the others are never cut at, which is always safe, and testing them would slow loading.
CUT_PROBE_END = 0x10000


@dataclass(frozen=True)
class Decoded:
    """Feeds for the graph, and what the response should report about them (e.g. truncation)."""

    feeds: Feeds
    parameters: Parameters = field(default_factory=dict)


class InputDecoder(Protocol):
    """Decodes one request input of one model version."""

    #: Feeds with a variable axis 1 (sequences) and the value that pads them when requests of
    #: different lengths are merged into one batch; feeds not listed must match exactly.
    pad_values: Mapping[str, int]

    def __call__(self, tensor: Tensor) -> Decoded: ...


DecoderFactory = Callable[[InputSpec, Path | None], InputDecoder]


def decode_tensor(spec: InputSpec, tensor: Tensor) -> Feeds:
    """A numeric tensor fed as given: datatype, shape, finiteness and range are checked."""
    if tensor.datatype != spec.datatype:
        raise InvalidInputError(
            f"input '{spec.name}' must be {spec.datatype}, got {tensor.datatype}"
        )
    data = tensor.data
    shape = list(data.shape)
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidInputError(f"input '{spec.name}' must have shape {spec.shape}, got {shape}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InvalidInputError(f"input '{spec.name}' holds NaN or infinite values")
    if spec.range is not None and data.size:
        low, high = spec.range
        if data.min() < low or data.max() > high:
            raise InvalidInputError(f"input '{spec.name}' values must lie in [{low:g}, {high:g}]")
    return {spec.name: data}


class TensorDecoder:
    """Numeric inputs: see :func:`decode_tensor`; nothing is padded."""

    pad_values: Mapping[str, int] = {}

    def __init__(self, spec: InputSpec, folder: Path | None = None) -> None:
        self.spec = spec

    def __call__(self, tensor: Tensor) -> Decoded:
        return Decoded(decode_tensor(self.spec, tensor))


def request_texts(name: str, tensor: Tensor) -> list[str]:
    """The strings of BYTES input ``name``, one per row; InvalidInputError names the first bad
    row."""
    if tensor.datatype != "BYTES":
        raise InvalidInputError(f"input '{name}' must be BYTES (text), got {tensor.datatype}")
    if tensor.data.ndim != 1:
        raise InvalidInputError(
            f"input '{name}' must have shape [batch], got {list(tensor.data.shape)}"
        )
    if len(tensor.data) == 0:
        raise InvalidInputError("the batch is empty (first dimension 0)")
    texts = []
    for row, value in enumerate(tensor.data):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"input '{name}' row {row} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc
        if not text.strip():
            raise InvalidInputError(f"input '{name}' row {row} is empty")
        texts.append(text)
    return texts


class TextDecoder:
    """BYTES [B] of UTF-8 text → ``input_ids`` and ``attention_mask`` int64 [B, S].

    Tokenized with the version's ``tokenizer.json`` (loaded here, once), truncated at
    ``max_length`` tokens and padded to the request's longest text; the batcher pads further
    when it merges requests. Truncated rows are reported as ``truncated`` (how many) and
    ``truncated_rows`` (their indices, comma-separated: OIP parameters are scalars). A long
    text costs about what ``max_length`` tokens cost: see :meth:`encode`.
    """

    def __init__(self, spec: InputSpec, folder: Path | None) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        settings = spec.text_spec
        if folder is None:
            raise ConfigError(f"text input '{spec.name}' needs the version folder's tokenizer")
        path = folder / settings.tokenizer
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception for missing or bad files
            raise ConfigError(f"{path}: cannot load the tokenizer: {exc}") from exc
        own = tokenizer.truncation
        max_length = settings.max_length or (own["max_length"] if own else None)
        if max_length is None:
            raise ConfigError(f"{path}: no max_length in config.yaml or the tokenizer")
        padding = tokenizer.padding
        pad_id = padding["pad_id"] if padding else tokenizer.token_to_id("[PAD]")
        self.max_length = int(max_length)
        self.pad_id = int(pad_id or 0)
        # Padding happens here and in the batcher (to the longest row), never to a fixed length.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer: Tokenizer = tokenizer
        self.cut_points = cut_points(tokenizer)
        self.ids_name = settings.input_ids
        self.mask_name = settings.attention_mask
        self.pad_values: Mapping[str, int] = {self.ids_name: self.pad_id, self.mask_name: 0}

    def encode(self, texts: list[str]) -> list[Encoding]:
        """The encodings the tokenizer gives the whole texts, computed from prefixes.

        A text longer than its character budget is cut before the first cut point past the
        budget. The cut text's tokens are the whole text's first tokens, so when the cut text
        overflows ``max_length`` the whole text does too, with the same ``max_length`` tokens.
        When it does not (runs of spaces, words longer than the tokenizer reads), the budget
        grows and the text is cut again, at worst up to the whole text. The answer is always
        the whole text's, while the tokenizer handles, and its overflow pieces hold, only
        about the budget's worth of tokens: a 250k-character text costs what a short one does.
        """
        done: dict[int, Encoding] = {}
        pending = list(range(len(texts)))
        budget = CHARS_PER_TOKEN * self.max_length
        while pending:
            cuts = [self.cut(texts[row], budget) for row in pending]
            retry = []
            encodings = self.tokenizer.encode_batch(cuts)
            for row, cut, encoding in zip(pending, cuts, encodings, strict=True):
                if encoding.overflowing or len(cut) == len(texts[row]):
                    done[row] = encoding
                else:
                    retry.append(row)
            pending = retry
            budget *= BUDGET_GROWTH
        return [done[row] for row in range(len(texts))]

    def cut(self, text: str, budget: int) -> str:
        """``text`` up to the first cut point at or past ``budget`` characters."""
        if self.cut_points is None or len(text) <= budget:
            return text
        point = self.cut_points.search(text, budget)
        return text if point is None else text[: point.start()]

    def __call__(self, tensor: Tensor) -> Decoded:
        encodings = self.encode(request_texts(self.spec.name, tensor))
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        truncated = []
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
            if encoding.overflowing:  # the tokens past max_length
                truncated.append(row)
        parameters: Parameters = {}
        if truncated:
            parameters = {
                "truncated": len(truncated),
                "truncated_rows": ",".join(map(str, truncated)),
            }
        return Decoded({self.ids_name: ids, self.mask_name: mask}, parameters)


def cut_points(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """A pattern matching the characters before which any text can be cut without changing a
    token before the cut; None when the tokenizer's pipeline promises no such characters.

    Cuts are safe where normalization is character by character and pre-tokenization splits
    on character classes alone (BERT's normalizer and pre-tokenizer), away from the characters
    of added tokens (matched in the raw text, they could straddle a cut). Which characters
    split is asked of the tokenizer itself: every candidate, placed between two letters, must
    leave both letters pieces of their own. Candidates are assigned characters that NFD never
    reorders (combining class 0, whose canonical class is stable across Unicode versions), so
    a normalizer with a newer Unicode table sees them the same.
    """
    from tokenizers import PreTokenizedString
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    if not isinstance(pre_tokenizer, BertPreTokenizer):
        return None
    if normalizer is not None and not isinstance(normalizer, BertNormalizer):
        return None
    added = tokenizer.get_added_tokens_decoder().values()
    if any(token.single_word or token.normalized for token in added):
        # Whether these match depends on the characters next to them, or on normalized text.
        return None
    reserved = {char for token in added for char in token.content}
    candidates = [
        code
        for code in range(CUT_PROBE_END)
        if _is_candidate(chr(code)) and chr(code) not in reserved
    ]
    # One probe for all: "a" c₀ "a" c₁ "a" …, candidate k at index 2k + 1.
    probe = PreTokenizedString("a" + "a".join(map(chr, candidates)) + "a")
    if normalizer is not None:
        probe.normalize(normalizer.normalize)
    pre_tokenizer.pre_tokenize(probe)
    spans = np.array(
        [span for _, span, _ in probe.get_splits(offset_referential="original")], dtype=np.int64
    ).reshape(-1, 2)
    # joined[b]: some piece runs across the boundary before character b.
    size = 2 * len(candidates) + 2
    depth = np.bincount(spans[:, 0] + 1, minlength=size) - np.bincount(spans[:, 1], minlength=size)
    joined = np.cumsum(depth) > 0
    index = 2 * np.arange(len(candidates)) + 1
    apart = ~joined[index] & ~joined[index + 1]
    return _character_class(np.asarray(candidates)[apart].tolist())


def _is_candidate(char: str) -> bool:
    category = unicodedata.category(char)
    if category in ("Cn", "Cs") or category.startswith("M"):
        return False
    return unicodedata.combining(unicodedata.normalize("NFD", char)[0]) == 0


def _character_class(codes: list[int]) -> re.Pattern[str] | None:
    """A pattern matching one of the (sorted) code points, as ranges."""
    if not codes:
        return None
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    body = "".join(
        re.escape(chr(low)) + ("" if low == high else "-" + re.escape(chr(high)))
        for low, high in ranges
    )
    return re.compile(f"[{body}]")


DECODERS: dict[str, DecoderFactory] = {"tensor": TensorDecoder, "text": TextDecoder}


def build_decoders(config: ModelConfig, folder: Path | None) -> dict[str, InputDecoder]:
    """One decoder per request input of the version in ``folder``; ConfigError if one fails."""
    return {spec.name: DECODERS[spec.decoder](spec, folder) for spec in config.inputs}


def pad_values(decoders: Mapping[str, InputDecoder]) -> dict[str, int]:
    """Every padded feed of a version and its pad value (what the batcher needs)."""
    return {name: value for d in decoders.values() for name, value in d.pad_values.items()}
