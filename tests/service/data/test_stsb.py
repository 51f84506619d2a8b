"""The STS-B loader: fairseq binarised files and GPT-2 byte-level BPE decoded on small files the
tests write themselves (no network), label scaling, the JSONL cache and the preparation."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from surety_serving.data import stsb
from surety_serving.data.stsb import (
    StsbError,
    StsbPair,
    bytes_to_unicode,
    decode_corpus,
    prepare_stsb,
    read_fairseq_dictionary,
    read_indexed_dataset,
    read_jsonl,
    read_labels,
    write_jsonl,
)

pytestmark = pytest.mark.unit

_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5}


def write_indexed_dataset(
    prefix: Path, sequences: Sequence[Sequence[int]], dtype: type[np.generic] = np.uint16
) -> None:
    """fairseq's MMapIndexedDataset writer: ``.bin`` holds the elements back to back, ``.idx``
    the magic, version 1, the dtype code, the count, int32 sizes and int64 byte offsets."""
    item = np.dtype(dtype)
    sizes = [len(s) for s in sequences]
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) * item.itemsize
    Path(f"{prefix}.bin").write_bytes(
        b"".join(np.asarray(s, dtype=item.newbyteorder("<")).tobytes() for s in sequences)
    )
    Path(f"{prefix}.idx").write_bytes(
        b"MMIDIDX\x00\x00"
        + struct.pack("<QBQ", 1, _CODES[item], len(sequences))
        + np.asarray(sizes, dtype="<i4").tobytes()
        + pointers.astype("<i8").tobytes()
    )


# Byte-level BPE tokens as raw bytes, with arbitrary GPT-2 ids; "é" is split over two tokens
# (its two UTF-8 bytes), the way byte-level BPE splits rare characters.
TOKENS: dict[bytes, int] = {
    b"A": 32,
    b" plane": 6614,
    b" caf": 40,
    b"\xc3": 700,
    b"\xa9": 701,
    b" \xe2\x80\x99": 12,  # " ’"
    b".": 13,
    b" \xf0\x9f\x99\x82": 5000,  # " 🙂"
    b"Na\xc3\xafve": 999,  # "Naïve"
    b"\n": 198,
}
# dict.txt lists GPT-2 ids in its own order (by corpus frequency); fairseq index = 4 + line.
DICT_ORDER = [13, 32, 6614, 999, 40, 700, 701, 12, 5000, 198]
PAIRS = [
    ([b"A", b" plane", b"."], [b"A", b" caf", b"\xc3", b"\xa9", b"."], "1"),
    ([b"Na\xc3\xafve", b" \xe2\x80\x99"], [b"A", b" \xf0\x9f\x99\x82"], "0.76"),
    ([b"."], [b"A", b"\n", b" plane"], "0.0134"),
]
EXPECTED = [
    StsbPair("A plane.", "A café.", 5.0),
    StsbPair("Naïve ’", "A 🙂", 3.8),
    StsbPair(".", "A\n plane", 0.067),
]


def _fairseq_ids(tokens: Sequence[bytes]) -> list[int]:
    return [4 + DICT_ORDER.index(TOKENS[t]) for t in tokens] + [2]  # fairseq appends </s>


def write_corpus(root: Path, dtype: type[np.generic] = np.uint16) -> tuple[Path, Path]:
    """A 3-pair ``roBERTa_STS`` folder (both splits alike) and its ``encoder.json``."""
    sts = root / "roBERTa_STS"
    table = bytes_to_unicode()
    encoder = {"".join(table[b] for b in token): i for token, i in TOKENS.items()}
    root.mkdir(parents=True, exist_ok=True)
    encoder_path = root / "encoder.json"
    encoder_path.write_text(json.dumps(encoder), encoding="utf-8")
    for column in ("input0", "input1"):
        (sts / column).mkdir(parents=True)
        lines = "".join(f"{i} {1000 - n}\n" for n, i in enumerate(DICT_ORDER))
        (sts / column / "dict.txt").write_text(lines + "madeupword0000 0\n", encoding="utf-8")
    (sts / "label").mkdir()
    for stem in ("train", "valid"):
        write_indexed_dataset(sts / "input0" / stem, [_fairseq_ids(a) for a, _, _ in PAIRS], dtype)
        write_indexed_dataset(sts / "input1" / stem, [_fairseq_ids(b) for _, b, _ in PAIRS], dtype)
        labels = "".join(f"{label}\n" for _, _, label in PAIRS)
        (sts / "label" / f"{stem}.label").write_text(labels, encoding="utf-8")
    return sts, encoder_path


# --------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_synthetic_corpus_decodes_exactly(tmp_path: Path, dtype: type[np.generic]) -> None:
    sts, encoder = write_corpus(tmp_path, dtype)
    corpus = decode_corpus(sts, encoder)
    assert corpus == {"train": EXPECTED, "dev": EXPECTED}


def test_indexed_dataset_round_trip(tmp_path: Path) -> None:
    sequences = [[5, 6, 2], [], [65535, 0], [7]]
    write_indexed_dataset(tmp_path / "x", sequences)
    assert [s.tolist() for s in read_indexed_dataset(tmp_path / "x")] == sequences


def test_indexed_dataset_rejects_foreign_and_truncated_files(tmp_path: Path) -> None:
    write_indexed_dataset(tmp_path / "x", [[1, 2, 3], [4]])
    index = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "x.idx").write_bytes(b"TNTIDX\x00\x00" + index[8:])
    with pytest.raises(StsbError, match="not a fairseq"):
        read_indexed_dataset(tmp_path / "x")
    (tmp_path / "x.idx").write_bytes(index[:-1])
    with pytest.raises(StsbError, match="bytes, expected"):
        read_indexed_dataset(tmp_path / "x")
    (tmp_path / "x.idx").write_bytes(index)
    (tmp_path / "x.bin").write_bytes((tmp_path / "x.bin").read_bytes()[:-2])
    with pytest.raises(StsbError, match="outside"):
        read_indexed_dataset(tmp_path / "x")


def test_dictionary_puts_the_fairseq_specials_first(tmp_path: Path) -> None:
    (tmp_path / "dict.txt").write_text("13 850\n262 800\n", encoding="utf-8")
    assert read_fairseq_dictionary(tmp_path / "dict.txt") == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
        "13",
        "262",
    ]


def test_labels_are_scaled_back_to_zero_to_five_exactly(tmp_path: Path) -> None:
    (tmp_path / "x.label").write_text("1\n0.76\n0.0134\n0\n0.85\n", encoding="utf-8")
    assert read_labels(tmp_path / "x.label") == [5.0, 3.8, 0.067, 0.0, 4.25]
    (tmp_path / "x.label").write_text("0.5\nnope\n", encoding="utf-8")
    with pytest.raises(StsbError, match=r"x\.label:2"):
        read_labels(tmp_path / "x.label")


def test_gpt2_byte_table_matches_gpt2() -> None:
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert table[0] == "Ā" and table[0xAD] == "Ń"


def test_special_or_unknown_symbols_are_errors(tmp_path: Path) -> None:
    sts, encoder = write_corpus(tmp_path)
    ids = _fairseq_ids([b"A"])
    write_indexed_dataset(sts / "input0" / "train", [[3, *ids], ids, ids])  # <unk>
    with pytest.raises(StsbError, match="index 3 is not a BPE token"):
        decode_corpus(sts, encoder)
    madeup = 4 + len(DICT_ORDER)
    write_indexed_dataset(sts / "input0" / "train", [[madeup, 2], ids, ids])
    with pytest.raises(StsbError, match="madeupword0000"):
        decode_corpus(sts, encoder)


def test_pair_and_label_counts_must_agree(tmp_path: Path) -> None:
    sts, encoder = write_corpus(tmp_path)
    (sts / "label" / "valid.label").write_text("1\n0.5\n", encoding="utf-8")
    with pytest.raises(StsbError, match="2 labels"):
        decode_corpus(sts, encoder)


# --------------------------------------------------------------------------------------------
# Cache and preparation


def test_jsonl_round_trip(tmp_path: Path) -> None:
    assert write_jsonl(tmp_path / "s.jsonl", EXPECTED) == 3
    assert read_jsonl(tmp_path / "s.jsonl") == EXPECTED
    assert "Naïve" in (tmp_path / "s.jsonl").read_text(encoding="utf-8")


def test_cache_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(stsb.CACHE_DIR_ENV, "/somewhere/stsb")
    assert stsb.default_cache_dir() == Path("/somewhere/stsb")
    monkeypatch.delenv(stsb.CACHE_DIR_ENV)
    assert stsb.default_cache_dir().parts[-2:] == ("data", "stsb")


def _unpacked_cache(cache: Path) -> None:
    """A cache whose sources are already unpacked (as a download would leave them)."""
    write_corpus(cache / "root")
    (cache / stsb.STAMP_NAME).write_text(json.dumps({"packages": []}), encoding="utf-8")


def test_prepare_decodes_checks_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_network(*args: object) -> Path:
        raise AssertionError("the cached sources should have been used")

    monkeypatch.setattr(stsb, "_pip_download", no_network)
    monkeypatch.setattr(stsb, "EXPECTED_SIZES", {"train": 3, "dev": 3})
    monkeypatch.setattr(stsb, "FIRST_TRAIN_PAIR", EXPECTED[0])
    _unpacked_cache(tmp_path)
    caplog.set_level(logging.INFO, logger="surety_serving.data")
    dataset = prepare_stsb(tmp_path)
    assert dataset.counts == {"train": 3, "dev": 3}
    assert read_jsonl(dataset.train) == EXPECTED and read_jsonl(dataset.dev) == EXPECTED
    assert not any("cached" in m for m in caplog.messages)
    again = prepare_stsb(tmp_path)
    assert again == dataset and "splits cached" in caplog.messages[-1]


def test_prepare_refuses_unexpected_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unpacked_cache(tmp_path)
    with pytest.raises(StsbError, match="split sizes"):
        prepare_stsb(tmp_path)  # the real sizes are 5,749 and 1,500
    monkeypatch.setattr(stsb, "EXPECTED_SIZES", {"train": 3, "dev": 3})
    with pytest.raises(StsbError, match="first train pair"):
        prepare_stsb(tmp_path)  # not "A plane is taking off."
