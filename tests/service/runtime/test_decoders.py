"""Input decoders: the text decoder on the tiny export's real tokenizer (padding, truncation,
input errors), its config section, and a version whose tokenizer is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from service.errors import InvalidInputError
from service.export.classifier import ExportResult
from service.runtime.config import InputSpec, load_config
from service.runtime.decoders import TextDecoder, build_decoders, pad_values
from service.runtime.repository import load_entry
from service.runtime.types import Tensor
from tests.service import textmodel


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
