"""Input decoders: the text decoder on the tiny export's real tokenizer (padding, truncation,
input errors, long texts cut before tokenizing yet answered as whole texts), its config
section, and a version whose tokenizer is missing."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from tokenizers import AddedToken, Encoding, Tokenizer, normalizers, pre_tokenizers

from surety_serving.errors import InvalidInputError
from surety_serving.export.classifier import ExportResult
from surety_serving.protocol.types import Tensor
from surety_serving.runtime.config import InputSpec, load_config
from surety_serving.runtime.decoders import (
    BUDGET_GROWTH,
    CHARS_PER_TOKEN,
    TextDecoder,
    build_decoders,
    cut_points,
    pad_values,
)
from surety_serving.runtime.repository import load_entry
from tests.service import textmodel

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def decoder(text_export: ExportResult) -> TextDecoder:
    config = load_config(text_export.model_root / "config.yaml")
    (built,) = build_decoders(config, text_export.version_dir).values()
    assert isinstance(built, TextDecoder)
    return built


def text(*values: bytes) -> Tensor:
    return Tensor("text", "BYTES", np.array(values, dtype=object))


def test_pads_to_the_request_longest_and_masks(decoder: TextDecoder) -> None:
    decoded = decoder(text(b"hello world", b"hi"))
    ids, mask = decoded.feeds["input_ids"], decoded.feeds["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape == (2, 4)  # [CLS] hello world [SEP]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert ids[1, 3] == decoder.pad_id == decoder.tokenizer.token_to_id("[PAD]")
    assert decoded.parameters == {}
    assert pad_values({"text": decoder}) == {"input_ids": decoder.pad_id, "attention_mask": 0}


def test_truncation_at_max_length_is_reported(decoder: TextDecoder) -> None:
    long = ("word " * 300).encode()
    decoded = decoder(text(b"short", long, long))
    assert decoder.max_length == textmodel.MAX_LENGTH
    assert decoded.feeds["input_ids"].shape == (3, textmodel.MAX_LENGTH)
    assert decoded.parameters == {"truncated": 2, "truncated_rows": "1,2"}
    # Exactly max_length tokens ([CLS] + 62 words + [SEP]) fits: nothing is reported.
    exact = decoder(text(("word " * (textmodel.MAX_LENGTH - 2)).encode()))
    assert exact.feeds["input_ids"].shape == (1, textmodel.MAX_LENGTH)
    assert exact.parameters == {}


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (text(b"ok", b"\xff\xfe"), "input 'text' row 1 is not valid UTF-8"),
        (text(b""), "input 'text' row 0 is empty"),
        (text(b"ok", b" \t\n"), "input 'text' row 1 is empty"),
        (Tensor("text", "FP32", np.zeros(2, np.float32)), "must be BYTES (text), got FP32"),
        (
            Tensor("text", "BYTES", np.array([[b"a"]], dtype=object)),
            "must have shape [batch], got [1, 1]",
        ),
    ],
    ids=["non-utf8", "empty", "whitespace", "fp32", "2d"],
)
def test_bad_input_names_the_problem(decoder: TextDecoder, tensor: Tensor, message: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        decoder(tensor)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"datatype": "FP32", "shape": [-1]}, "must be BYTES with shape [-1]"),
        ({"datatype": "BYTES", "shape": [-1, 1]}, "must be BYTES with shape [-1]"),
        ({"decoder": "tensor", "text": {"max_length": 8}}, "a 'text' section needs decoder"),
        ({"text": {"max_length": 0}}, "greater than 0"),
        ({"text": {"tokenizer": "../x.json"}}, "String should match pattern"),
    ],
)
def test_text_input_config_is_validated(fields: dict[str, object], message: str) -> None:
    spec = {"name": "text", "datatype": "BYTES", "shape": [-1], "decoder": "text", **fields}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        InputSpec.model_validate(spec)


def test_a_version_without_its_tokenizer_fails_alone(
    text_export: ExportResult, tmp_path: Path
) -> None:
    entry = tmp_path / textmodel.NAME
    shutil.copytree(text_export.model_root, entry)
    shutil.copytree(entry / str(textmodel.VERSION), entry / "4")
    (entry / "4" / "tokenizer.json").unlink()
    loaded = load_entry(entry, intra_op_threads=1)
    assert list(loaded.versions) == [textmodel.VERSION]
    assert "tokenizer" in loaded.failures["4"]
    config = yaml.safe_load((entry / "config.yaml").read_text())
    assert config["inputs"][0]["text"]["tokenizer"] == "tokenizer.json"


# -- long texts: cut before tokenizing, answered as whole texts ---------------------------------


@pytest.fixture(scope="module")
def whole(text_export: ExportResult, decoder: TextDecoder) -> Tokenizer:
    """The exported tokenizer as applied to whole texts: truncation at max_length, no cut."""
    tokenizer = Tokenizer.from_file(str(text_export.tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=decoder.max_length)
    return tokenizer


def assert_as_whole(decoder: TextDecoder, whole: Tokenizer, texts: list[str]) -> None:
    """The decoder's tokens and truncation flag for each text are the whole text's."""
    for text, encoding in zip(texts, decoder.encode(texts), strict=True):
        expected = whole.encode(text)
        assert (encoding.ids, bool(encoding.overflowing)) == (
            expected.ids,
            bool(expected.overflowing),
        ), f"{text[:60]!r}… ({len(text)} characters)"


#: Characters the normalizer drops or keeps inside a word: cutting before one splits a word.
JOINERS = list("\x0b\x00\x1c\x85\u0301\u200b\u200da\ufb01\U0001f600")
#: Words whose tokens change when they are cut (long ones become [UNK] past 100 characters),
#: and added tokens, whose brackets are punctuation.
STRADDLERS = [
    *("unbelievably" + joiner + "y" * 95 for joiner in JOINERS),
    "[MASK]",
    "unbelievably[MASK]",
    "[MASK]unbelievably",
    "e\u0301" * 8,
    "\u6f22\u5b57" * 6,
]
#: Material of random texts: words, long words, runs of spaces and punctuation, CJK, emoji,
#: combining marks, controls, added tokens and pieces of them.
PIECES = [
    *STRADDLERS,
    "word",
    "Compiler's",
    "x" * 100,
    "y" * 101,
    " ",
    "  ",
    " " * 300,
    "\t",
    "\r\n",
    "\xa0",
    "\u3000",
    "!",
    "...",
    "!" * 120,
    "[CLS]",
    "[MA",
    "SK]",
    "\u5b57",
    "\u3002",
    "\u00ab\u00bb",
    "\U0001f600" * 30,
    "\u03a3\u0391\u03a3",
    "\ud55c\uad6d\uc5b4",
    "\u2028",
    "\ufffd",
    "https://example.com/a?b=c",
    "1,234.56",
]


def straddling_texts(rng: random.Random, budget: int, kept: int) -> list[str]:
    """Texts whose ``kept``-th token (give or take two) starts a word that straddles the first
    cut point past ``budget``: where a wrong cut point changes the answer."""
    texts = []
    for word in STRADDLERS:
        for before in range(kept - 2, kept + 1):
            for shift in range(14):
                # ``before`` one-token words spread over the characters up to ``budget - shift``.
                gaps = [1] * before
                for _ in range(budget - shift - 5 * before):
                    gaps[rng.randrange(before)] += 1
                filler = "".join("word" + " " * gap for gap in gaps)
                texts.append(filler + word + rng.choice(["", " ", "!"]) + " more" * 30)
    return texts


def random_texts(rng: random.Random, budget: int, count: int) -> list[str]:
    texts = []
    for _ in range(count):
        target = rng.randint(budget // 2, 4 * budget)
        joiner = rng.choice(["", " ", "\n"])
        parts: list[str] = []
        while sum(map(len, parts)) < target:
            parts.append(rng.choice(PIECES))
        texts.append(joiner.join(parts))
    return texts


def boundary_texts(budget: int, kept: int) -> list[str]:
    """Texts at the budget's edge, and texts of exactly ``kept`` tokens and one more, whose
    last token lies past the first cut."""
    texts = []
    for length in range(budget - 2, budget + 3):
        texts += ["a" * length + " tail", ("word " * budget)[:length], "!" * length + "word"]
        texts += [" " * length + "word " * 100, "word " * (kept - 1) + "x" * length]
    for count in (kept - 1, kept, kept + 1):
        texts += [" ".join(["word"] * count) + " " * 2 * budget, " " * 2 * budget + "word " * count]
        texts.append(" ".join(["word"] * (count - 1)) + " " * 2 * budget + "last")
    return texts


def test_cut_texts_answer_as_whole_texts(decoder: TextDecoder, whole: Tokenizer) -> None:
    rng = random.Random(8)
    budget = CHARS_PER_TOKEN * decoder.max_length
    kept = decoder.max_length - whole.num_special_tokens_to_add(is_pair=False)
    texts = [
        *random_texts(rng, budget, 400),
        *straddling_texts(rng, budget, kept),
        *straddling_texts(rng, budget * BUDGET_GROWTH, kept),
        *boundary_texts(budget, kept),
    ]
    assert_as_whole(decoder, whole, texts)
    # Both ways through were taken many times: texts settled by their first cut, and texts
    # whose first cut held too few tokens.
    cuts = [decoder.cut(text, budget) for text in texts]
    settled = [
        len(cut) < len(text) and bool(whole.encode(cut).overflowing)
        for text, cut in zip(texts, cuts, strict=True)
    ]
    grown = [
        len(cut) < len(text) and not done
        for text, cut, done in zip(texts, cuts, settled, strict=True)
    ]
    assert sum(settled) > 300
    assert sum(grown) > 300


def test_the_comparison_catches_a_wrong_cut_point(
    decoder: TextDecoder, whole: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the tokenizer would not split (a vertical tab is dropped, joining two words),
    cutting changes answers, and the texts above show it."""
    monkeypatch.setattr(decoder, "cut_points", re.compile("[ \x0b]"))
    budget = CHARS_PER_TOKEN * decoder.max_length
    kept = decoder.max_length - whole.num_special_tokens_to_add(is_pair=False)
    with pytest.raises(AssertionError):
        assert_as_whole(decoder, whole, straddling_texts(random.Random(8), budget, kept))


@pytest.mark.parametrize(
    ("char", "cut"),
    [
        *((char, True) for char in " \t\n\r\xa0\u3000!-.\u3002\u5b57"),
        *((char, False) for char in "a\x0b\x0c\x00\x85\u200b\u0301\ufb01\U0001f600[]"),
    ],
)
def test_cut_points_are_where_the_tokenizer_always_splits(
    decoder: TextDecoder, char: str, cut: bool
) -> None:
    """Whitespace, punctuation and CJK ideographs; never a character the normalizer drops, a
    mark, a letter, or a bracket of the added tokens ([CLS], [MASK], ...)."""
    assert decoder.cut_points is not None
    assert bool(decoder.cut_points.fullmatch(char)) is cut


def test_no_cut_points_where_the_pipeline_could_join_across_them(
    text_export: ExportResult,
) -> None:
    def variant() -> Tokenizer:
        return Tokenizer.from_file(str(text_export.tokenizer_path))

    assert cut_points(variant()) is not None
    grouping = variant()
    grouping.pre_tokenizer = pre_tokenizers.Whitespace()  # "!!" is one piece, not two
    composing = variant()
    composing.normalizer = normalizers.NFKC()  # may compose a character with the next
    phrase = variant()
    phrase.add_tokens(["new york"])  # matched in normalized text, across a space
    whole_word = variant()
    whole_word.add_tokens([AddedToken("<x>", single_word=True, normalized=False)])
    for tokenizer in (grouping, composing, phrase, whole_word):
        assert cut_points(tokenizer) is None


def test_without_cut_points_texts_are_tokenized_whole(
    decoder: TextDecoder, whole: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoder, "cut_points", None)
    text = "The compiler rejected the program again. " * 100
    assert decoder.cut(text, 10) == text
    assert_as_whole(decoder, whole, [text])


class Recording:
    """A tokenizer stand-in that counts the characters it is given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.characters = 0

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        self.characters += sum(map(len, texts))
        return self.tokenizer.encode_batch(texts)


def test_a_long_text_costs_what_its_kept_tokens_cost(
    decoder: TextDecoder, whole: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prose = ("The compiler rejected the program again. " * 7000)[:250_000]
    spaced = " " * 5000 + prose  # its first cuts are all spaces: the budget grows twice
    texts = [prose, spaced] * 16
    recording = Recording(decoder.tokenizer)
    monkeypatch.setattr(decoder, "tokenizer", recording)
    decoded = decoder(text(*(t.encode() for t in texts)))
    assert decoded.parameters == {"truncated": 32, "truncated_rows": ",".join(map(str, range(32)))}
    assert recording.characters < sum(map(len, texts)) / 20
    # The overflow pieces hold the cut text's excess, not the whole text's.
    cut, full = decoder.encode([prose])[0], whole.encode(prose)
    assert len(cut.overflowing) <= 2 < 500 < len(full.overflowing)
    assert cut.ids == full.ids
    assert decoded.feeds["input_ids"][0].tolist() == full.ids
