"""The judge prompt: named text fields → one chat-formatted prompt → left-padded token ids.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_ASSISTANT_PREFIX",
    "TRUNCATION_MARKER",
    "EncodedPrompts",
    "PromptTemplate",
    "PromptTooLongError",
    "encode_prompts",
    "load_tokenizer",
    "render_chat_template",
]

DEFAULT_ASSISTANT_PREFIX = "Score: "
#: What replaces the tokens cut from the middle of a field, so the model sees that text is missing.
TRUNCATION_MARKER = " … "
#: A placeholder that no template or chat format contains: where the chat template is cut.
_SENTINEL = "\u0000SURETY_USER_MESSAGE\u0000"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Re-encoding a cut field can merge tokens differently at the cut; a few rounds settle it.
_MAX_ROUNDS = 8


class PromptTooLongError(ValueError):
    """A prompt exceeds max_prompt_tokens even with its truncatable fields cut to nothing."""


@dataclass(frozen=True)
class PromptTemplate:
    """The judge prompt as plain strings (see the module docstring for how they combine).

    ``user`` names each of ``fields`` once as ``{field}``; other braces are literal text.
    ``system`` is a record of the system message already rendered into ``prefix``.
    """

    fields: tuple[str, ...]
    user: str
    prefix: str
    suffix: str
    assistant_prefix: str = DEFAULT_ASSISTANT_PREFIX
    system: str = ""

    def __post_init__(self) -> None:
        problems = template_problems(self.fields, self.user)
        if problems:
            raise ValueError("; ".join(problems))

    def render_user(self, values: Mapping[str, str]) -> str:
        """The user message: ``user`` with each ``{field}`` replaced by its value."""
        missing = [name for name in self.fields if name not in values]
        if missing:
            raise KeyError(f"prompt fields missing: {', '.join(missing)}")
        known = set(self.fields)

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            return values[name] if name in known else match.group(0)

        # One pass over the template: a value containing "{text_b}" is not expanded again.
        return _PLACEHOLDER.sub(substitute, self.user)

    def render(self, values: Mapping[str, str]) -> str:
        """The whole prompt the model reads, up to and including the assistant prefix."""
        return self.prefix + self.render_user(values) + self.suffix + self.assistant_prefix

    @property
    def assistant_tail(self) -> str:
        """The text right before the score token: what score tokens are validated after."""
        return self.suffix + self.assistant_prefix


def template_problems(fields: Sequence[str], user: str) -> list[str]:
    """Why ``user`` is not a template of exactly ``fields`` (empty when it is)."""
    problems = []
    if not fields:
        problems.append("a judge prompt needs at least one field")
    if len(set(fields)) != len(fields):
        problems.append(f"fields repeat: {list(fields)}")
    named = _PLACEHOLDER.findall(user)
    for name in fields:
        count = named.count(name)
        if count != 1:
            problems.append(f"the user template names {{{name}}} {count} times, not once")
    return problems


def render_chat_template(
    hf_tokenizer: Any,
    fields: Sequence[str],
    user: str,
    *,
    system: str | None = None,
    assistant_prefix: str = DEFAULT_ASSISTANT_PREFIX,
) -> PromptTemplate:
    """Render ``hf_tokenizer``'s chat template once into a :class:`PromptTemplate`.

    The conversation is ``[system?, user]`` with the generation prompt added; the user message is
    a sentinel, so the template's own handling of the user text (none, in every template we know)
    cannot alter the placeholders. ``system`` None keeps the template's default system message,
    if it has one.
    """
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": _SENTINEL})
    rendered = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str) or rendered.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not render the user message verbatim once")
    prefix, suffix = rendered.split(_SENTINEL)
    return PromptTemplate(
        fields=tuple(fields),
        user=user,
        prefix=prefix,
        suffix=suffix,
        assistant_prefix=assistant_prefix,
        system=system or "",
    )


def load_tokenizer(path: str) -> Tokenizer:
    """A ``tokenizers`` tokenizer from ``tokenizer.json`` with padding and truncation off:
    :func:`encode_prompts` pads (on the left) and truncates (in the middle) itself."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@dataclass(frozen=True)
class EncodedPrompts:
    """A left-padded batch: ``input_ids`` and ``attention_mask`` int64 [B, T]; ``truncated``
    [B] how many of each row's field tokens were cut."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    truncated: npt.NDArray[np.int64]

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Each row's real (unpadded) number of tokens."""
        lengths: npt.NDArray[np.int64] = self.attention_mask.sum(axis=1)
        return lengths


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def _cut_middle(tokenizer: Tokenizer, text: str, drop: int) -> tuple[str, int]:
    """``text`` without ``drop`` tokens from its middle (the marker in their place), and how
    many of its tokens were dropped. Cuts fall on token boundaries (the tokenizer's offsets)."""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    total = len(offsets)
    if drop <= 0 or total == 0:
        return text, 0
    keep = max(total - drop, 0)
    if keep == 0:
        return TRUNCATION_MARKER.strip(), total
    head, tail = (keep + 1) // 2, keep // 2
    start = offsets[head - 1][1] if head else 0
    end = offsets[total - tail][0] if tail else len(text)
    return text[:start] + TRUNCATION_MARKER + text[end:], total - keep


def _fit(
    tokenizer: Tokenizer,
    template: PromptTemplate,
    values: Mapping[str, str],
    max_tokens: int,
    truncate: Sequence[str],
) -> tuple[list[int], int]:
    """One row's token ids within ``max_tokens``, and how many field tokens were cut."""
    ids = _ids(tokenizer, template.render(values))
    if len(ids) <= max_tokens:
        return ids, 0
    current = dict(values)
    originals = {name: len(_ids(tokenizer, values[name])) for name in truncate}
    dropped = dict.fromkeys(truncate, 0)
    for _ in range(_MAX_ROUNDS):
        excess = len(ids) - max_tokens
        if excess <= 0:
            break
        for name in truncate:
            available = originals[name] - dropped[name]
            if excess <= 0 or available <= 0:
                continue
            # Always from the original text: cutting a cut text would nest markers.
            before = dropped[name]
            want = min(originals[name], before + excess)
            current[name], dropped[name] = _cut_middle(tokenizer, values[name], want)
            excess -= dropped[name] - before
        ids = _ids(tokenizer, template.render(current))
        if all(dropped[name] >= originals[name] for name in truncate):
            break
    if len(ids) > max_tokens:
        raise PromptTooLongError(
            f"the prompt needs {len(ids)} tokens with its truncatable fields "
            f"({', '.join(truncate) or 'none'}) cut; max_prompt_tokens is {max_tokens}"
        )
    return ids, sum(dropped.values())


def encode_prompts(
    tokenizer: Tokenizer,
    template: PromptTemplate,
    rows: Sequence[Mapping[str, str]],
    *,
    max_prompt_tokens: int,
    truncate: Sequence[str] = (),
    pad_token_id: int,
) -> EncodedPrompts:
    """Render, tokenize, truncate and left-pad a batch of prompts (one mapping of field values
    per row). Left padding keeps every row's last token in the last column, where the judge
    reads the score logits; the model's positions come from the attention mask."""
    unknown = [name for name in truncate if name not in template.fields]
    if unknown:
        raise ValueError(f"truncate names fields the prompt lacks: {unknown}")
    if not rows:
        raise ValueError("no prompts to encode")
    encoded = [_fit(tokenizer, template, row, max_prompt_tokens, truncate) for row in rows]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, (ids, _) in enumerate(encoded):
        input_ids[row, width - len(ids) :] = ids
        attention_mask[row, width - len(ids) :] = 1
    truncated = np.array([cut for _, cut in encoded], dtype=np.int64)
    return EncodedPrompts(input_ids, attention_mask, truncated)
