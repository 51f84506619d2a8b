"""Input decoding, one decoder per model input: request tensors in, validated feeds out.

Decoding happens before a request joins a batch, so anything it rejects fails that request alone.
Decoders are objects built once per model version at load time (``build_decoders``), so a text
decoder holds that version's tokenizer and never reads tokenizer.json during a request. The
``DECODERS`` table maps config.yaml's ``decoder:`` names to their factories.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.errors import ConfigError, InvalidInputError
from service.runtime.config import InputSpec, ModelConfig
from service.runtime.session import Feeds
from service.runtime.types import Parameters, Tensor

if TYPE_CHECKING:
    from tokenizers import Tokenizer


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


class TextDecoder:
    """BYTES [B] of UTF-8 text → ``input_ids`` and ``attention_mask`` int64 [B, S].

    Tokenized with the version's ``tokenizer.json`` (loaded here, once), truncated at
    ``max_length`` tokens and padded to the request's longest text; the batcher pads further
    when it merges requests. Truncated rows are reported as ``truncated`` (how many) and
    ``truncated_rows`` (their indices, comma-separated: OIP parameters are scalars).
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
        self.ids_name = settings.input_ids
        self.mask_name = settings.attention_mask
        self.pad_values: Mapping[str, int] = {self.ids_name: self.pad_id, self.mask_name: 0}

    def texts(self, tensor: Tensor) -> list[str]:
        """The request's strings; InvalidInputError names the first bad row."""
        name = self.spec.name
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
                    f"input '{name}' row {row} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start})"
                ) from exc
            if not text.strip():
                raise InvalidInputError(f"input '{name}' row {row} is empty")
            texts.append(text)
        return texts

    def __call__(self, tensor: Tensor) -> Decoded:
        encodings = self.tokenizer.encode_batch(self.texts(tensor))
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


DECODERS: dict[str, DecoderFactory] = {"tensor": TensorDecoder, "text": TextDecoder}


def build_decoders(config: ModelConfig, folder: Path | None) -> dict[str, InputDecoder]:
    """One decoder per request input of the version in ``folder``; ConfigError if one fails."""
    return {spec.name: DECODERS[spec.decoder](spec, folder) for spec in config.inputs}


def pad_values(decoders: Mapping[str, InputDecoder]) -> dict[str, int]:
    """Every padded feed of a version and its pad value (what the batcher needs)."""
    return {name: value for d in decoders.values() for name, value in d.pad_values.items()}
