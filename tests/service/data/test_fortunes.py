"""The fortunes loader: parsing small hand-written files, deterministic stratified splits, and
the real corpus."""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from surety_serving.data import fortunes
from surety_serving.data.fortunes import (
    Example,
    FortunesError,
    load_topics,
    parse_fortune_bytes,
    parse_fortune_file,
    prepare_fortunes,
    read_jsonl,
    split_stratified,
    write_jsonl,
)
from surety_serving.data.near_duplicates import group_near_duplicates

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------------------------
# Parsing


def test_entries_are_separated_by_percent_lines(tmp_path: Path) -> None:
    path = tmp_path / "topic"
    path.write_bytes(b"first entry\n%\nsecond\nentry\n%\nthird\n")
    assert parse_fortune_file(path) == ["first entry", "second entry", "third"]


def test_trailing_separator_and_empty_entries_are_dropped() -> None:
    data = b"%\none\n%\n%\n   \n\t\n%\ntwo\n%\n"
    assert parse_fortune_bytes(data) == ["one", "two"]


def test_only_whole_line_percent_separates() -> None:
    data = b"100% sure\n%% not a separator\n%  \nnext\r\n%\r\nlast"
    assert parse_fortune_bytes(data) == ["100% sure %% not a separator", "next", "last"]


def test_whitespace_is_collapsed() -> None:
    data = b"  Indented\tline,\n\n     hard-wrapped   text.\n\t\t-- Attribution  \n%\n"
    assert parse_fortune_bytes(data) == ["Indented line, hard-wrapped text. -- Attribution"]


def test_overstrikes_keep_the_struck_character_and_controls_are_dropped() -> None:
    data = b"_\x08b_\x08o_\x08l_\x08d and B\x08BO\x08OL\x08LD\x07!\n"
    assert parse_fortune_bytes(data) == ["bold and BOLD!"]


def test_decoding_is_utf8_with_latin1_fallback_per_entry() -> None:
    data = "caf\u00e9 in UTF-8\n%\n".encode() + b"caf\xe9 in Latin-1\n%\n\xff\xfe raw\n"
    assert parse_fortune_bytes(data) == [
        "caf\u00e9 in UTF-8",
        "caf\u00e9 in Latin-1",
        "\u00ff\u00fe raw",
    ]


def test_load_topics_reads_each_topic_and_rejects_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "food").write_bytes(b"pie\n%\ncake\n")
    (tmp_path / "food.dat").write_bytes(b"\x00\x00\x00\x02index")
    (tmp_path / "law").write_bytes(b"order\n")
    assert load_topics(tmp_path, ["food", "law"]) == {"food": ["pie", "cake"], "law": ["order"]}
    with pytest.raises(FortunesError, match="'sports' not found"):
        load_topics(tmp_path, ["food", "sports"])


def test_a_topic_without_entries_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"%\n\n%\n")
    with pytest.raises(FortunesError, match="no entries"):
        load_topics(tmp_path, ["empty"])


def test_jsonl_round_trip(tmp_path: Path) -> None:
    examples = [Example('a "quoted" text \u00e9', "x"), Example("b", "y")]
    path = tmp_path / "sub" / "set.jsonl"
    assert write_jsonl(path, examples) == 2
    assert read_jsonl(path) == examples
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == {
        "text": 'a "quoted" text \u00e9',
        "label": "x",
    }


# --------------------------------------------------------------------------------------------
# Splits


def _corpus() -> dict[str, list[str]]:
    sizes = {"big": 200, "mid": 60, "small": 20, "tiny": 3}
    return {label: [f"{label} {i}" for i in range(n)] for label, n in sizes.items()}


def test_same_seed_same_split_different_seed_different_split() -> None:
    corpus = _corpus()
    first = split_stratified(corpus, seed=7)
    assert split_stratified(corpus, seed=7) == first
    other = split_stratified(corpus, seed=8)
    assert other != first
    assert {e.text for e in other.test} != {e.text for e in first.test}


def test_splits_are_disjoint_complete_and_stratified() -> None:
    corpus = _corpus()
    splits = split_stratified(corpus, seed=0, fractions=(0.7, 0.15, 0.15))
    parts = [splits.train, splits.calibration, splits.test]
    texts = [{e.text for e in part} for part in parts]
    assert sum(len(t) for t in texts) == sum(len(v) for v in corpus.values())
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    for label, items in corpus.items():
        counts = [sum(e.label == label for e in part) for part in parts]
        assert all(c >= 1 for c in counts), (label, counts)
        if len(items) >= 20:
            n = len(items)
            assert abs(counts[0] - 0.7 * n) <= 1
            assert abs(counts[1] - 0.15 * n) <= 1
            assert abs(counts[2] - 0.15 * n) <= 1
    for part in parts:
        for e in part:
            assert e.text.startswith(e.label)


def test_a_topics_split_does_not_depend_on_the_other_topics() -> None:
    corpus = _corpus()
    alone = split_stratified({"mid": corpus["mid"]}, seed=3)
    together = split_stratified(corpus, seed=3)
    assert [e for e in together.test if e.label == "mid"] == alone.test


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_stratified(_corpus(), seed=0, fractions=(0.5, 0.2, 0.2))


def test_deduplication_drops_ambiguous_and_leaking_texts() -> None:
    kept = fortunes._deduplicate(
        {"a": ["same", "x", "x", "only a"], "b": ["same", "only b"]},
        {"z": ["x", "new", "new"]},
        {},
    )
    assert kept.in_distribution == {"a": ["x", "only a"], "b": ["only b"]}
    assert kept.ood == {"z": ["new"]}


def _sentences(seed: int, n: int) -> list[str]:
    """Unrelated sentences of random words (no two near-copies)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [
        " ".join("".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(12))
        for _ in range(n)
    ]


def _variants(text: str) -> list[str]:
    """Near-copies: another case, punctuation and an attribution; one word changed."""
    words = text.split()
    return [
        text.upper() + "!! -- Anonymous",
        " ".join([*words[:-1], "zzzzzz"]),
    ]


def test_deduplication_of_near_copies_by_set_and_topic() -> None:
    a, b, c, d, e, f, g = _sentences(0, 7)
    kept = fortunes._deduplicate(
        {
            # a's near-copies stay together; b appears in two topics: ambiguous.
            "one": [a, *_variants(a), b, c, c.lower() + "."],
            "two": [_variants(b)[1], d],
        },
        {"ood": [_variants(d)[0], e, *_variants(e)]},
        {"held": [_variants(e)[1], f, _variants(c)[0], g]},
    )
    assert kept.in_distribution == {"one": [a, *_variants(a), c], "two": [d]}
    assert kept.ood == {"ood": [e, *_variants(e)]}
    assert kept.ood_validation == {"held": [f, g]}
    assert len({kept.groups[t] for t in [a, *_variants(a)]}) == 1
    assert len({kept.groups[t] for t in (a, c, d)}) == 3
    assert kept.counts == {
        "entries": 16,
        "repeats": 1,
        "ambiguous": 2,
        "ood_near_in_distribution": 1,
        "ood_validation_near_other_sets": 2,
        "kept": 10,
        "groups": 7,
        "multi_member_groups": 5,
        "in_multi_member_groups": 13,
        "largest_group": 4,
    }


def test_a_group_goes_whole_to_one_split() -> None:
    rng = np.random.default_rng(5)
    corpus = {label: [f"{label} {i}" for i in range(n)] for label, n in (("x", 90), ("y", 41))}
    # Consecutive texts of a topic in groups of one to four.
    groups: dict[str, int] = {}
    for texts in corpus.values():
        start = 0
        while start < len(texts):
            size = int(rng.integers(1, 5))
            groups.update(dict.fromkeys(texts[start : start + size], len(groups)))
            start += size
    for seed in range(20):
        splits = split_stratified(corpus, seed=seed, groups=groups)
        parts = (splits.train, splits.calibration, splits.test)
        where = {e.text: k for k, part in enumerate(parts) for e in part}
        assert sorted(where) == sorted(t for texts in corpus.values() for t in texts)
        splits_of: dict[int, set[int]] = {}
        for text, group in groups.items():
            splits_of.setdefault(group, set()).add(where[text])
        assert all(len(found) == 1 for found in splits_of.values())
        for label, texts in corpus.items():
            counts = [sum(e.label == label for e in part) for part in parts]
            # The plain cut's counts, missed by at most half the largest group.
            assert abs(counts[1] - round(0.15 * len(texts))) <= 2
            assert abs(counts[2] - round(0.15 * len(texts))) <= 2


def test_without_groups_a_topic_is_a_plain_cut_of_its_permutation() -> None:
    """A text alone lands where its position in the topic's seeded permutation lies."""
    texts = [f"t {i}" for i in range(50)]
    order = np.random.default_rng([4, zlib.crc32(b"t")]).permutation(50)
    cut = [[texts[i] for i in part] for part in (order[:34], order[34:42], order[42:])]
    for groups in (None, {}, {text: i for i, text in enumerate(texts)}):
        splits = split_stratified({"t": texts}, seed=4, groups=groups)
        assert [
            [e.text for e in part] for part in (splits.train, splits.calibration, splits.test)
        ] == cut


def test_missing_tools_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(FortunesError, match="'apt-get' not found"):
        fortunes.download_corpus(tmp_path / "cache")


def test_a_failed_download_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in apt-get that fails like an unreachable mirror does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Failed to fetch http://mirror/InRelease' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    if not fortunes.DEBIAN_KEYRING.is_file():
        pytest.skip("no Debian archive keyring on this machine")
    with pytest.raises(FortunesError, match=r"apt-get update failed \(exit status 100\)"):
        fortunes.download_corpus(tmp_path / "cache")
    assert not (tmp_path / "cache" / "corpus.json").exists()


def test_prepare_splits_a_local_corpus_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With an already unpacked corpus: JSONL files, a manifest, and no re-split on a 2nd call."""
    topic_dir = tmp_path / "root" / fortunes.TOPIC_SUBDIR
    topic_dir.mkdir(parents=True)
    for seed, topic in enumerate(("a", "b", "ood")):
        entries = _sentences(seed, 20)
        (topic_dir / topic).write_bytes(("\n%\n".join(entries) + "\n%\n").encode())
    (tmp_path / "corpus.json").write_text("{}", encoding="utf-8")
    caplog.set_level(logging.INFO, logger="surety_serving.data")
    dataset = prepare_fortunes(tmp_path, seed=1, topics=("a", "b"), ood_topics=("ood",))
    assert dataset.labels == ("a", "b")
    assert [len(read_jsonl(p)) for p in (dataset.train, dataset.calibration, dataset.test)] == [
        28,
        6,
        6,
    ]
    assert read_jsonl(dataset.ood["ood"])[0].label == "ood"
    assert dataset.counts["test"] == {"a": 3, "b": 3}
    assert dataset.deduplication["kept"] == dataset.deduplication["groups"] == 60
    stamp = dataset.train.stat().st_mtime_ns
    again = prepare_fortunes(tmp_path, seed=1, topics=("a", "b"), ood_topics=("ood",))
    assert again == dataset
    assert dataset.train.stat().st_mtime_ns == stamp
    assert caplog.messages[-1].startswith("splits cached")


# --------------------------------------------------------------------------------------------
# The real corpus, from the cache `make data` fills (data/fortunes or $SURETY_FORTUNES_DIR)


@pytest.fixture(scope="session")
def real_dataset() -> fortunes.FortunesDataset:
    return prepare_fortunes(seed=0)


def test_real_corpus_has_every_topic(real_dataset: fortunes.FortunesDataset) -> None:
    assert real_dataset.labels == fortunes.IN_DISTRIBUTION_TOPICS
    for split in ("train", "calibration", "test"):
        counts = real_dataset.counts[split]
        assert set(counts) == set(fortunes.IN_DISTRIBUTION_TOPICS)
        assert all(n > 0 for n in counts.values()), (split, counts)
    train = read_jsonl(real_dataset.train)
    test = read_jsonl(real_dataset.test)
    assert len(train) == sum(real_dataset.counts["train"].values()) > 2000
    assert not {e.text for e in train} & {e.text for e in test}
    assert all(e.text and e.text == " ".join(e.text.split()) for e in train)
    for topic, path in real_dataset.ood.items():
        ood = read_jsonl(path)
        assert len(ood) > 100 and {e.label for e in ood} == {topic}


def test_ood_validation_topics_are_held_out_from_every_other_split(
    real_dataset: fortunes.FortunesDataset,
) -> None:
    assert tuple(real_dataset.ood_validation) == fortunes.OOD_VALIDATION_TOPICS
    paths = real_dataset.split_paths()
    validation_names = {f"ood_validation_{topic}" for topic in real_dataset.ood_validation}
    taken = {
        e.text
        for name, path in paths.items()
        if name not in validation_names
        for e in read_jsonl(path)
    }
    for topic, path in real_dataset.ood_validation.items():
        assert paths[f"ood_validation_{topic}"] == path
        validation = read_jsonl(path)
        assert len(validation) > 100 and {e.label for e in validation} == {topic}
        assert real_dataset.counts[f"ood_validation_{topic}"] == {topic: len(validation)}
        assert not {e.text for e in validation} & taken


def _side(name: str) -> str:
    """train, calibration or test, or the kind of OOD set."""
    if name.startswith("ood_validation_"):
        return "ood_validation"
    return "ood" if name.startswith("ood_") else name


def test_real_corpus_near_copies_never_straddle_splits(
    real_dataset: fortunes.FortunesDataset, tmp_path: Path
) -> None:
    """Split afresh from the cached corpus (the cached splits were made by whatever code made
    them) and grouped again, the files' near-copies lie on one side: one of train, calibration
    and test, or the OOD test topics, or the OOD validation topics."""
    cache = real_dataset.directory.parent.parent
    (tmp_path / "root").symlink_to(cache / "root")
    shutil.copy(cache / "corpus.json", tmp_path / "corpus.json")
    dataset = prepare_fortunes(tmp_path, seed=1)
    texts, sides = [], []
    for name, path in dataset.split_paths().items():
        for example in read_jsonl(path):
            texts.append(example.text)
            sides.append(_side(name))
    groups = group_near_duplicates(texts).groups
    sides_of: dict[int, set[str]] = {}
    for group, side in zip(groups, sides, strict=True):
        sides_of.setdefault(group, set()).add(side)
    assert all(len(found) == 1 for found in sides_of.values())
    in_distribution = {"train", "calibration", "test"}
    sizes = Counter(g for g, side in zip(groups, sides, strict=True) if side in in_distribution)
    assert sum(size > 1 for size in sizes.values()) >= 20
    counts = dataset.deduplication
    assert counts == real_dataset.deduplication
    assert counts["kept"] == sum(sum(c.values()) for c in dataset.counts.values())
    dropped = ("repeats", "ambiguous", "ood_near_in_distribution", "ood_validation_near_other_sets")
    assert counts["entries"] - sum(counts[reason] for reason in dropped) == counts["kept"]


def test_ood_validation_drops_texts_of_the_other_splits(tmp_path: Path) -> None:
    topic_dir = tmp_path / "root" / fortunes.TOPIC_SUBDIR
    topic_dir.mkdir(parents=True)
    topics = {
        "a": ["in a", "a 1", "a 2"],
        "ood": ["in ood", "ood 1"],
        "held": ["in a", "in ood", "kept", "kept"],
    }
    for topic, entries in topics.items():
        (topic_dir / topic).write_text("\n%\n".join(entries) + "\n", encoding="utf-8")
    (tmp_path / "corpus.json").write_text("{}", encoding="utf-8")
    dataset = prepare_fortunes(
        tmp_path,
        topics=("a",),
        ood_topics=("ood",),
        ood_validation_topics=("held",),
    )
    assert [e.text for e in read_jsonl(dataset.ood_validation["held"])] == ["kept"]
    assert [e.text for e in read_jsonl(dataset.ood["ood"])] == ["in ood", "ood 1"]
    own_choice = prepare_fortunes(tmp_path, topics=("a",), ood_topics=("ood",))
    assert own_choice.ood_validation == {}
    assert "ood_validation_held" not in own_choice.split_paths()
