"""The judge prompt: templates of named fields, the chat template rendered once, left padding,
truncation in the middle of the judged texts."""

from __future__ import annotations

import numpy as np
import pytest

from surety_serving.judge.prompt import (
    TRUNCATION_MARKER,
    PromptTemplate,
    PromptTooLongError,
    encode_prompts,
    render_chat_template,
)
from tests.service.judge.tinylm import build_tokenizer

pytestmark = pytest.mark.unit

USER = "Sentence A : {text_a} . Sentence B : {text_b} . Rate how"


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(hf_tokenizer):
    backend = hf_tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    return backend


@pytest.fixture(scope="module")
def template(hf_tokenizer):
    return render_chat_template(hf_tokenizer, ("text_a", "text_b"), USER, system="You are a judge")


def test_chat_template_is_rendered_once_into_prefix_and_suffix(hf_tokenizer, template):
    values = {"text_a": "A man is playing a guitar", "text_b": "Stocks fell"}
    user = "Sentence A : A man is playing a guitar . Sentence B : Stocks fell . Rate how"
    messages = [{"role": "system", "content": "You are a judge"}, {"role": "user", "content": user}]
    expected = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert template.render(values) == expected + "Score: "
    assert template.prefix.startswith("<|im_start|>system\nYou are a judge<|im_end|>")
    assert template.suffix == "<|im_end|>\n<|im_start|>assistant\n"


def test_default_system_message_is_kept_when_none_is_given(hf_tokenizer):
    template = render_chat_template(hf_tokenizer, ("text_a",), "{text_a}")
    assert "You are a tiny judge" in template.prefix
    assert template.system == ""


def test_values_are_not_expanded_again_and_other_braces_stay():
    template = PromptTemplate(("a", "b"), "{a} | {b} | {json}", prefix="<", suffix=">")
    assert template.render_user({"a": "{b}", "b": "x"}) == "{b} | x | {json}"
    assert template.render({"a": "1", "b": "2"}) == "<1 | 2 | {json}>Score: "


@pytest.mark.parametrize(
    ("fields", "user", "message"),
    [
        (("a",), "no placeholder", "names {a} 0 times"),
        (("a",), "{a} and {a}", "names {a} 2 times"),
        (("a", "a"), "{a}", "fields repeat"),
        ((), "text", "at least one field"),
    ],
)
def test_bad_templates_are_refused(fields, user, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(fields, user, prefix="", suffix="")


def test_missing_field_value_is_an_error(template):
    with pytest.raises(KeyError, match="text_b"):
        template.render({"text_a": "x"})


def test_left_padding_puts_every_prompt_at_the_end(tokenizer, template):
    rows = [
        {"text_a": "Stocks fell", "text_b": "A man"},
        {"text_a": "A man is playing a guitar in the morning", "text_b": "Stocks fell"},
    ]
    batch = encode_prompts(tokenizer, template, rows, max_prompt_tokens=512, pad_token_id=2)
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
    alone = [tokenizer.encode(template.render(r), add_special_tokens=False).ids for r in rows]
    assert batch.lengths.tolist() == [len(ids) for ids in alone]
    assert len(alone[0]) < len(alone[1])  # the first row is padded
    for row, ids in enumerate(alone):
        pad = batch.input_ids.shape[1] - len(ids)
        assert batch.input_ids[row, pad:].tolist() == ids
        assert batch.attention_mask[row].tolist() == [0] * pad + [1] * len(ids)
        assert (batch.input_ids[row, :pad] == 2).all()
    assert batch.truncated.tolist() == [0, 0]


def test_long_prompts_are_cut_in_the_middle_of_the_judged_text(tokenizer, template):
    # Words of the test vocabulary: the decoded prompt shows which survived.
    sentence = "Two dogs run across a wide green field , chasing a red ball that a child has thrown"
    words = sentence.split() * 6  # 102 tokens
    rows = [{"text_a": " ".join(words), "text_b": "Stocks fell"}, {"text_a": "A", "text_b": "B"}]
    full = len(tokenizer.encode(template.render(rows[0]), add_special_tokens=False).ids)
    limit = full - 30
    batch = encode_prompts(
        tokenizer,
        template,
        rows,
        max_prompt_tokens=limit,
        truncate=["text_a", "text_b"],
        pad_token_id=2,
    )
    assert batch.lengths[0] <= limit
    # Cut from text_a only (it comes first and is long enough), 30 tokens plus the marker's.
    assert 30 <= batch.truncated[0] <= 32 and batch.truncated[1] == 0
    text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0] == 1].tolist())
    # The start and end of the judged text survive, and the rest of the prompt is intact.
    kept = len(words) - int(batch.truncated[0])
    head, tail = " ".join(words[: (kept + 1) // 2]), " ".join(words[len(words) - kept // 2 :])
    assert f"Sentence A : {head} {tail} . Sentence B : Stocks fell . Rate how" in text
    assert text.endswith("assistant Score :")


def test_cut_marker_replaces_the_middle(tokenizer):
    template = PromptTemplate(("a",), "{a}", prefix="", suffix="", assistant_prefix="")
    text = "Two dogs run across a wide green field chasing a red ball"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    rows = [{"a": text}]
    batch = encode_prompts(
        tokenizer, template, rows, max_prompt_tokens=7, truncate=["a"], pad_token_id=0
    )
    # 12 words in 7 tokens: 6 kept (3 + 3) around the marker (unknown here: [UNK], id 0).
    unknown = tokenizer.token_to_id("[UNK]")
    assert TRUNCATION_MARKER.strip() and tokenizer.token_to_id(TRUNCATION_MARKER.strip()) is None
    assert batch.input_ids[0].tolist() == [*ids[:3], unknown, *ids[-3:]]
    assert batch.truncated.tolist() == [6]


def test_prompt_that_cannot_fit_is_refused(tokenizer, template):
    rows = [{"text_a": "A", "text_b": "B"}]
    with pytest.raises(PromptTooLongError, match="max_prompt_tokens is 5"):
        encode_prompts(
            tokenizer, template, rows, max_prompt_tokens=5, truncate=["text_a"], pad_token_id=2
        )
    with pytest.raises(ValueError, match="truncate names fields"):
        encode_prompts(
            tokenizer, template, rows, max_prompt_tokens=50, truncate=["nope"], pad_token_id=2
        )
