"""A judge version's request fields → the prompt tokens its graph reads.

Where a classifier decodes each request input alone, a judge reads its named BYTES fields
together: row i of every field fills the template of row i's prompt (surety_serving.judge.prompt),
which
is tokenized with the version's ``tokenizer.json`` (loaded once, here), cut in the middle of the
truncatable fields when over ``max_prompt_tokens``, and left padded, so that every row's last
token, where the score is read, sits in the last column. The batcher keeps it so when it merges
requests (``pad_left``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from surety_serving.errors import ConfigError, InvalidInputError
from surety_serving.judge.prompt import (
    PromptTemplate,
    PromptTooLongError,
    encode_prompts,
    load_tokenizer,
)
from surety_serving.protocol.types import Parameters, Tensor
from surety_serving.runtime.decoders import Decoded, request_texts

if TYPE_CHECKING:
    from surety_serving.tasks.judge import JudgeSpec


class JudgeInputs:
    """Encodes the fields of one request into ``input_ids`` and ``attention_mask``."""

    def __init__(self, spec: JudgeSpec, folder: Path) -> None:
        path = folder / spec.tokenizer
        try:
            self.tokenizer = load_tokenizer(str(path))
        except Exception as exc:  # tokenizers raises bare Exception for missing or bad files
            raise ConfigError(f"{path}: cannot load the tokenizer: {exc}") from exc
        prompt = spec.prompt
        self.template = PromptTemplate(
            tuple(spec.fields), prompt.user, prompt.prefix, prompt.suffix,
            prompt.assistant_prefix, prompt.system,
        )  # fmt: skip
        self.spec = spec
        #: The sequence feeds and their pad values; both are padded on the left.
        self.pad_values: Mapping[str, int] = {
            spec.input_ids: spec.pad_token_id,
            spec.attention_mask: 0,
        }

    def __call__(self, fields: Mapping[str, Tensor]) -> Decoded:
        """The prompts of every row; the rows whose fields were cut are reported as
        ``truncated`` (how many rows), ``truncated_rows`` and ``truncated_tokens`` (per row,
        comma-separated: OIP parameters are scalars)."""
        texts = {name: request_texts(name, fields[name]) for name in self.spec.fields}
        counts = {len(rows) for rows in texts.values()}
        if len(counts) != 1:
            sizes = ", ".join(f"{name} {len(rows)}" for name, rows in texts.items())
            raise InvalidInputError(f"the judge's fields must have one row each alike: {sizes}")
        (count,) = counts
        rows = [{name: texts[name][row] for name in texts} for row in range(count)]
        try:
            encoded = encode_prompts(
                self.tokenizer, self.template, rows,
                max_prompt_tokens=self.spec.max_prompt_tokens,
                truncate=self.spec.truncate, pad_token_id=self.spec.pad_token_id,
            )  # fmt: skip
        except PromptTooLongError as exc:
            raise InvalidInputError(str(exc)) from None
        cut = [row for row in range(count) if encoded.truncated[row]]
        parameters: Parameters = {}
        if cut:
            parameters = {
                "truncated": len(cut),
                "truncated_rows": ",".join(map(str, cut)),
                "truncated_tokens": ",".join(str(int(encoded.truncated[row])) for row in cut),
            }
        feeds = {
            self.spec.input_ids: encoded.input_ids,
            self.spec.attention_mask: encoded.attention_mask,
        }
        return Decoded(feeds, parameters)
