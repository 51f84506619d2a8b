"""Debian's ``fortunes`` cookie files as a labeled text corpus: one file per topic.

docs/models.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surety_serving.data.debian import (
    DEBIAN_KEYRING,
    DEBIAN_MIRROR,
    DEBIAN_SUITE,
    DebianError,
    download_packages,
    locked,
    read_stamp,
    repo_root,
)
from surety_serving.data.jsonl import cached_counts, read_records, write_manifest, write_records
from surety_serving.data.near_duplicates import PARAMETERS, group_near_duplicates, normal_form

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR_ENV",
    "DEBIAN_KEYRING",
    "IN_DISTRIBUTION_TOPICS",
    "OOD_TOPICS",
    "OOD_VALIDATION_TOPICS",
    "Example",
    "FortunesDataset",
    "FortunesError",
    "Splits",
    "decode_entry",
    "default_cache_dir",
    "download_corpus",
    "load_topics",
    "normalise_entry",
    "parse_fortune_bytes",
    "parse_fortune_file",
    "prepare_fortunes",
    "read_jsonl",
    "split_stratified",
    "write_jsonl",
]

IN_DISTRIBUTION_TOPICS: tuple[str, ...] = (
    "computers",
    "linux",
    "politics",
    "science",
    "law",
    "education",
    "food",
    "sports",
    "love",
    "medicine",
    "startrek",
)
OOD_TOPICS: tuple[str, ...] = ("zippy", "songs-poems")
# For tuning OOD detection (thresholds, settings), so that OOD_TOPICS stay an unseen test.
OOD_VALIDATION_TOPICS: tuple[str, ...] = ("wisdom", "literature")
PACKAGES: tuple[str, ...] = ("fortunes", "fortunes-min")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
CACHE_DIR_ENV = "SURETY_FORTUNES_DIR"
TOPIC_SUBDIR = Path("usr/share/games/fortunes")
# Bump when parsing, normalisation or deduplication changes, so cached splits made the old way
# are rebuilt.
FORMAT_VERSION = 2
# The manifest's counts hold, beside one entry per file, what deduplication dropped and grouped.
DEDUPLICATION = "deduplication"

_SEPARATOR = re.compile(rb"^%[ \t\r]*$", re.MULTILINE)
_OVERSTRIKE = re.compile(r"[^\x08\n]\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# The corpus fails the ways its download does; one class lets callers catch both.
FortunesError = DebianError


@dataclass(frozen=True)
class Example:
    """One labeled entry."""

    text: str
    label: str


@dataclass(frozen=True)
class Splits:
    """A stratified train / calibration / test split of in-distribution examples."""

    train: list[Example]
    calibration: list[Example]
    test: list[Example]


@dataclass(frozen=True)
class FortunesDataset:
    """Where the prepared JSONL files are, and what they hold."""

    directory: Path
    train: Path
    calibration: Path
    test: Path
    ood: dict[str, Path]
    labels: tuple[str, ...]
    seed: int
    ood_validation: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    deduplication: dict[str, int] = field(default_factory=dict)

    def split_paths(self) -> dict[str, Path]:
        """Every JSONL file by split name (``ood_<topic>`` and ``ood_validation_<topic>`` for
        the OOD sets)."""
        paths = {"train": self.train, "calibration": self.calibration, "test": self.test}
        paths.update({f"ood_{topic}": path for topic, path in self.ood.items()})
        paths.update(
            {f"ood_validation_{topic}": path for topic, path in self.ood_validation.items()}
        )
        return paths


# --------------------------------------------------------------------------------------------
# Parsing


def decode_entry(raw: bytes) -> str:
    """UTF-8 if the bytes are valid UTF-8, else Latin-1 (which accepts every byte)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def normalise_entry(text: str) -> str:
    """Resolve overstrikes, drop control characters, collapse whitespace to single spaces."""
    previous = None
    while previous != text:  # "a\b\bxy" style chains need more than one pass
        previous = text
        text = _OVERSTRIKE.sub("", text)
    text = _CONTROL.sub("", text)
    return " ".join(text.split())


def parse_fortune_bytes(data: bytes) -> list[str]:
    """Entries of one fortune file's bytes, decoded and normalised, empty ones dropped."""
    entries = []
    for raw in _SEPARATOR.split(data):
        text = normalise_entry(decode_entry(raw))
        if text:
            entries.append(text)
    return entries


def parse_fortune_file(path: Path) -> list[str]:
    """Entries of one fortune file (see :func:`parse_fortune_bytes`)."""
    return parse_fortune_bytes(Path(path).read_bytes())


def load_topics(topic_dir: Path, topics: Iterable[str]) -> dict[str, list[str]]:
    """Entries per topic from ``topic_dir/<topic>``; a missing or empty topic is an error."""
    topic_dir = Path(topic_dir)
    result: dict[str, list[str]] = {}
    for topic in topics:
        path = topic_dir / topic
        if not path.is_file():
            available = sorted(
                p.name for p in topic_dir.glob("*") if p.is_file() and p.suffix not in {".dat"}
            )
            raise FortunesError(
                f"topic {topic!r} not found in {topic_dir} (available: {', '.join(available)})"
            )
        entries = parse_fortune_file(path)
        if not entries:
            raise FortunesError(f"topic {topic!r} in {path} has no entries")
        result[topic] = entries
    return result


# --------------------------------------------------------------------------------------------
# Splitting


@dataclass(frozen=True)
class _Deduplicated:
    """What is left of the parsed topics, the near-duplicate group of each in-distribution
    text (the split keeps a group whole), and the counts of what was grouped and dropped."""

    in_distribution: dict[str, list[str]]
    ood: dict[str, list[str]]
    ood_validation: dict[str, list[str]]
    groups: dict[str, int]
    counts: dict[str, int]


# Why an entry is dropped when its group holds an entry of an earlier set (in-distribution,
# then OOD, then OOD validation): by the rank of the set it belongs to.
_NEAR_EARLIER_SET = {1: "ood_near_in_distribution", 2: "ood_validation_near_other_sets"}


def _deduplicate(
    in_distribution: Mapping[str, Sequence[str]],
    ood: Mapping[str, Sequence[str]],
    ood_validation: Mapping[str, Sequence[str]],
) -> _Deduplicated:
    # Ranked sets: each may not come near any set before it. The three are grouped together, so
    # that a chain of near-copies through one set still joins what it links in another.
    ranked = (in_distribution, ood, ood_validation)
    entries: list[tuple[int, str, str]] = []
    repeats = 0
    for rank, topics in enumerate(ranked):
        for topic, texts in topics.items():
            seen: set[str] = set()
            for text in texts:
                key = normal_form(text) or text
                if key in seen:
                    repeats += 1
                else:
                    seen.add(key)
                    entries.append((rank, topic, text))
    groups = group_near_duplicates([text for _, _, text in entries]).groups
    first_rank: dict[int, int] = {}
    labels: dict[int, set[str]] = {}
    for (rank, topic, _), group in zip(entries, groups, strict=True):
        first_rank[group] = min(rank, first_rank.get(group, rank))
        if rank == 0:
            labels.setdefault(group, set()).add(topic)
    kept: list[dict[str, list[str]]] = [{topic: [] for topic in topics} for topics in ranked]
    dropped: Counter[str] = Counter()
    for (rank, topic, text), group in zip(entries, groups, strict=True):
        if rank == 0 and len(labels[group]) > 1:
            dropped["ambiguous"] += 1  # near-copies filed under two topics: no single label
        elif first_rank[group] < rank:
            dropped[_NEAR_EARLIER_SET[rank]] += 1
        else:
            kept[rank][topic].append(text)
    sizes = Counter(groups)
    counts = {
        "entries": len(entries) + repeats,
        "repeats": repeats,
        "ambiguous": dropped["ambiguous"],
        **{reason: dropped[reason] for reason in _NEAR_EARLIER_SET.values()},
        "kept": sum(len(texts) for topics in kept for texts in topics.values()),
        "groups": len(sizes),
        "multi_member_groups": sum(size > 1 for size in sizes.values()),
        "in_multi_member_groups": sum(size for size in sizes.values() if size > 1),
        "largest_group": max(sizes.values(), default=0),
    }
    in_distribution_groups = {
        text: group for (rank, _, text), group in zip(entries, groups, strict=True) if rank == 0
    }
    return _Deduplicated(kept[0], kept[1], kept[2], in_distribution_groups, counts)


def split_stratified(
    examples: Mapping[str, Sequence[str]],
    *,
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    groups: Mapping[str, int] | None = None,
) -> Splits:
    """Split each topic's texts into train / calibration / test in the given proportions.

    Deterministic for a seed. Each topic is shuffled by a generator seeded with (seed, topic).
    Texts of a topic with the same ``groups`` value go to the same split (a text not in
    ``groups`` is a group of its own); each split's count then misses its target by at most half
    the largest group. A topic of at least three texts, each its own group, gets at least one
    in every split (a larger group may leave a small split empty).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    train: list[Example] = []
    calibration: list[Example] = []
    test: list[Example] = []
    for label in sorted(examples):
        texts = list(examples[label])
        units: list[list[str]] = []
        unit_of: dict[int, list[str]] = {}
        for text in texts:
            group = groups.get(text) if groups is not None else None
            if group is None:
                units.append([text])
            elif group in unit_of:
                unit_of[group].append(text)
            else:
                unit_of[group] = [text]
                units.append(unit_of[group])
        n = len(texts)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        n_cal = round(n * fractions[1])
        n_test = round(n * fractions[2])
        if n >= 3:
            n_cal = max(n_cal, 1) if fractions[1] > 0 else 0
            n_test = max(n_test, 1) if fractions[2] > 0 else 0
        n_train = n - n_cal - n_test
        # The shuffled units lie end to end on [0, n), the splits on [0, n_train),
        # [n_train, n_train + n_cal) and the rest; a unit goes to the split that holds its
        # middle. Single texts at [i, i + 1) land where i lies: a plain cut of the permutation.
        start = 0
        for index in rng.permutation(len(units)):
            unit = units[index]
            middle = start + len(unit) / 2
            target = train if middle < n_train else calibration if middle < n - n_test else test
            target.extend(Example(text, label) for text in unit)
            start += len(unit)
    return Splits(train=train, calibration=calibration, test=test)


# --------------------------------------------------------------------------------------------
# JSONL


def write_jsonl(path: Path, examples: Iterable[Example]) -> int:
    """Write ``{"text", "label"}`` lines atomically; returns the number written."""
    return write_records(path, ({"text": e.text, "label": e.label} for e in examples))


def read_jsonl(path: Path) -> list[Example]:
    """Read ``{"text", "label"}`` lines (blank lines are skipped)."""

    def example(record: dict[str, Any]) -> Example:
        return Example(str(record["text"]), str(record["label"]))

    return read_records(path, example, "text, label")


# --------------------------------------------------------------------------------------------
# Download


def default_cache_dir() -> Path:
    """``$SURETY_FORTUNES_DIR``, else ``data/fortunes`` under the repository (or the cwd)."""
    if override := os.environ.get(CACHE_DIR_ENV):
        return Path(override)
    return (repo_root() or Path.cwd()) / "data" / "fortunes"


def download_corpus(
    cache_dir: Path,
    *,
    suite: str = DEBIAN_SUITE,
    mirror: str = DEBIAN_MIRROR,
) -> Path:
    """Fetch and unpack ``fortunes`` + ``fortunes-min`` under ``cache_dir``; returns the topic dir.

    Cached: when ``cache_dir/corpus.json`` exists the download is skipped.
    """
    root = download_packages(cache_dir, PACKAGES, (TOPIC_SUBDIR,), suite=suite, mirror=mirror)
    return root / TOPIC_SUBDIR


# --------------------------------------------------------------------------------------------
# The whole preparation


def _split_parameters(
    seed: int,
    fractions: tuple[float, float, float],
    topics: Sequence[str],
    ood_topics: Sequence[str],
    ood_validation_topics: Sequence[str],
    corpus: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "fractions": list(fractions),
        "topics": list(topics),
        "ood_topics": list(ood_topics),
        "ood_validation_topics": list(ood_validation_topics),
        "near_duplicates": dict(PARAMETERS),
        "corpus": dict(corpus),
    }


def prepare_fortunes(
    cache_dir: Path | None = None,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    topics: Sequence[str] = IN_DISTRIBUTION_TOPICS,
    ood_topics: Sequence[str] = OOD_TOPICS,
    ood_validation_topics: Sequence[str] | None = None,
    log: object = None,
) -> FortunesDataset:
    """Download (once), parse, deduplicate and split the corpus; write JSONL files (once).

    Files land in ``<cache_dir>/splits/seed-<seed>/``: ``train.jsonl``, ``calibration.jsonl``,
    ``test.jsonl``, ``ood_<topic>.jsonl``, ``ood_validation_<topic>.jsonl`` and
    ``manifest.json``. A second call with the same parameters reads the manifest and returns
    without downloading or splitting.

    ``ood_validation_topics=None`` means :data:`OOD_VALIDATION_TOPICS` with the default
    ``topics`` and ``ood_topics``, and none with a choice of one's own: those topics were picked
    to be held out from the default ones, and need not exist in a hand-made corpus.

    Progress goes to this module's logger. ``log`` is ignored: bench/loadgen.py still passes
    ``log=`` (that file is being split on another branch); drop it once no caller does.
    """
    del log
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if ood_validation_topics is None:
        defaults = tuple(topics) == IN_DISTRIBUTION_TOPICS and tuple(ood_topics) == OOD_TOPICS
        ood_validation_topics = OOD_VALIDATION_TOPICS if defaults else ()
    with locked(cache_dir):
        return _prepare(cache_dir, seed, fractions, topics, ood_topics, ood_validation_topics)


def _prepare(
    cache_dir: Path,
    seed: int,
    fractions: tuple[float, float, float],
    topics: Sequence[str],
    ood_topics: Sequence[str],
    ood_validation_topics: Sequence[str],
) -> FortunesDataset:
    topic_dir = download_corpus(cache_dir)
    parameters = _split_parameters(
        seed, fractions, topics, ood_topics, ood_validation_topics, read_stamp(cache_dir)
    )

    out = cache_dir / "splits" / f"seed-{seed}"
    dataset = FortunesDataset(
        directory=out,
        train=out / "train.jsonl",
        calibration=out / "calibration.jsonl",
        test=out / "test.jsonl",
        ood={topic: out / f"ood_{topic}.jsonl" for topic in ood_topics},
        labels=tuple(topics),
        seed=seed,
        ood_validation={
            topic: out / f"ood_validation_{topic}.jsonl" for topic in ood_validation_topics
        },
    )
    cached = cached_counts(out, parameters, dataset.split_paths().values())
    if cached is not None:
        log.info(f"splits cached in {out}")
        deduplication = cached.pop(DEDUPLICATION)
        return FortunesDataset(
            **{**dataset.__dict__, "counts": cached, "deduplication": deduplication}
        )

    log.info(
        f"parsing {len(topics)} in-distribution, {len(ood_topics)} OOD and "
        f"{len(ood_validation_topics)} OOD validation topics"
    )
    started = time.perf_counter()
    kept = _deduplicate(
        load_topics(topic_dir, topics),
        load_topics(topic_dir, ood_topics),
        load_topics(topic_dir, ood_validation_topics),
    )
    log.info(
        f"deduplicated in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{name} {n}" for name, n in kept.counts.items())
    )
    splits = split_stratified(
        kept.in_distribution, seed=seed, fractions=fractions, groups=kept.groups
    )
    counts: dict[str, dict[str, int]] = {}
    for name, examples in (
        ("train", splits.train),
        ("calibration", splits.calibration),
        ("test", splits.test),
    ):
        write_jsonl(out / f"{name}.jsonl", examples)
        per_label = {topic: 0 for topic in topics}
        for example in examples:
            per_label[example.label] += 1
        counts[name] = per_label
    for prefix, paths, texts in (
        ("ood", dataset.ood, kept.ood),
        ("ood_validation", dataset.ood_validation, kept.ood_validation),
    ):
        for topic, path in paths.items():
            write_jsonl(path, (Example(text, topic) for text in texts[topic]))
            counts[f"{prefix}_{topic}"] = {topic: len(texts[topic])}
    write_manifest(out, parameters, {**counts, DEDUPLICATION: kept.counts})
    totals = ", ".join(f"{name} {sum(c.values())}" for name, c in counts.items())
    log.info(f"splits written to {out}: {totals}")
    return FortunesDataset(**{**dataset.__dict__, "counts": counts, "deduplication": kept.counts})
