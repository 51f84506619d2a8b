"""Near-duplicate grouping: the normal form, attributions, MinHash against exact Jaccard, LSH
recall, union-find, and the same groups in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest

from surety_serving.data.near_duplicates import (
    BANDS,
    ROWS,
    THRESHOLD,
    char_shingles,
    components,
    group_near_duplicates,
    jaccard,
    minhash,
    normal_form,
    shingles,
    strip_attribution,
)

pytestmark = pytest.mark.unit

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def words(rng: np.random.Generator, n: int) -> list[str]:
    """Random words: unrelated texts made of them share almost no character 5-grams."""
    return ["".join(rng.choice(LETTERS, size=rng.integers(3, 9))) for _ in range(n)]


def edited(rng: np.random.Generator, text: list[str], fraction: float) -> list[str]:
    """``text`` with a ``fraction`` of its words replaced by new ones."""
    result = list(text)
    for i in rng.choice(len(text), size=round(fraction * len(text)), replace=False):
        result[i] = words(rng, 1)[0]
    return result


def corpus(seed: int = 0) -> list[str]:
    """Unrelated texts, and edited copies of some of them at several distances."""
    rng = np.random.default_rng(seed)
    texts = [words(rng, int(rng.integers(6, 30))) for _ in range(120)]
    copies = [edited(rng, texts[i], fraction) for i in range(40) for fraction in (0.1, 0.3, 0.6)]
    return [" ".join(t) for t in texts + copies]


# --------------------------------------------------------------------------------------------
# What texts are compared by


def test_the_normal_form_equates_case_punctuation_and_spacing() -> None:
    assert normal_form("Eat, drink -- and be MERRY!") == "eat drink and be merry"
    assert normal_form('  "Eat drink and be merry" ') == "eat drink and be merry"
    assert normal_form("caf\u00e9_au-lait 2") == "caf\u00e9 au lait 2"
    assert normal_form("*** ???") == ""


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ("To teach is to learn twice. -- Joseph Joubert", "To teach is to learn twice."),
        ('Peace was the way. -- Kirk, "The City on the Edge of Forever"', "Peace was the way."),
        ('"I\'m hungry." --"Peter"', '"I\'m hungry."'),
        # A dash inside a sentence: lower case after it, or no closing punctuation before it.
        ("Keep grandma off the streets -- legalize bingo.", None),
        ('"The C Programming Language -- A language which combines the flexibility"', None),
        ("Only a dash. -- 42", None),
        # Nothing would be left.
        ("-- Mark Twain", None),
        ("... -- Mark Twain", None),
    ],
)
def test_a_trailing_attribution_is_stripped(text: str, body: str | None) -> None:
    assert strip_attribution(text) == (text if body is None else body)


def test_short_texts_are_one_shingle_and_empty_ones_none() -> None:
    assert char_shingles("abcdef", 5) == {"abcde", "bcdef"}
    assert char_shingles("abc", 5) == {"abc"}
    assert char_shingles("", 5) == frozenset()
    assert jaccard(frozenset(), frozenset()) == 0.0
    assert shingles("Hi! -- Anybody") == {"hi"}


# --------------------------------------------------------------------------------------------
# MinHash and LSH


def test_minhash_estimates_the_exact_jaccard_similarity() -> None:
    """The fraction of agreeing signature values is an unbiased estimate of the Jaccard
    similarity with variance J(1 − J)/k: every pair of a sample spanning the whole range lies
    within 4.5 standard deviations, and the mean error is near 0."""
    rng = np.random.default_rng(1)
    pairs = []
    for fraction in np.linspace(0.0, 1.0, 21):
        for _ in range(3):
            text = words(rng, 25)
            pairs.append((" ".join(text), " ".join(edited(rng, text, float(fraction)))))
    sets = [shingles(t) for pair in pairs for t in pair]
    k = BANDS * ROWS
    signatures = minhash(sets, k)
    exact = np.array([jaccard(sets[2 * p], sets[2 * p + 1]) for p in range(len(pairs))])
    estimate = (signatures[0::2] == signatures[1::2]).mean(axis=1)
    assert exact.min() < 0.05 and exact.max() == 1.0 and ((exact > 0.3) & (exact < 0.7)).any()
    sigma = np.sqrt(exact * (1 - exact) / k)
    assert np.all(np.abs(estimate - exact) <= 4.5 * sigma + 1e-9), np.abs(estimate - exact).max()
    assert abs(float((estimate - exact).mean())) < 0.02


def test_signatures_of_empty_sets_hold_the_sentinel() -> None:
    signatures = minhash([frozenset(), frozenset({"abcde"})], 8)
    assert np.all(signatures[0] == (1 << 31) - 1) and np.all(signatures[1] < (1 << 31) - 1)


def test_lsh_finds_every_pair_over_the_threshold() -> None:
    texts = corpus()
    sets = [shingles(t) for t in texts]
    exact = {
        (i, j)
        for i, j in combinations(range(len(texts)), 2)
        if jaccard(sets[i], sets[j]) >= THRESHOLD
    }
    grouping = group_near_duplicates(texts)
    assert len(exact) >= 40
    assert {(i, j) for i, j, _ in grouping.pairs} == exact
    assert all(s == jaccard(sets[i], sets[j]) for i, j, s in grouping.pairs)
    # LSH looks at a small part of the n(n − 1)/2 pairs.
    assert grouping.candidates < len(texts) * (len(texts) - 1) / 2 / 20


# --------------------------------------------------------------------------------------------
# Groups


def test_union_find_is_transitive_and_names_a_group_by_its_first_member() -> None:
    assert components(7, [(5, 6), (1, 2), (2, 4), (0, 0)]) == [0, 1, 1, 3, 1, 5, 5]
    assert components(4, [(2, 3), (0, 3), (1, 2)]) == [0, 0, 0, 0]


def test_a_chain_of_near_copies_is_one_group() -> None:
    rng = np.random.default_rng(2)
    a = words(rng, 40)
    b = a[:32] + words(rng, 8)
    c = words(rng, 8) + b[8:]
    texts = [" ".join(t) for t in (a, b, c)] + [" ".join(words(rng, 30))]
    sets = [shingles(t) for t in texts]
    assert jaccard(sets[0], sets[1]) >= THRESHOLD and jaccard(sets[1], sets[2]) >= THRESHOLD
    assert jaccard(sets[0], sets[2]) < THRESHOLD
    assert group_near_duplicates(texts).groups == [0, 0, 0, 3]


def test_a_shared_attribution_alone_does_not_make_near_copies() -> None:
    """Two different quotes under one long attribution are alike as whole texts; the same quote
    under two attributions is alike once they are gone."""
    source = ' -- Kirk, "The City on the Edge of Forever", stardate unknown'
    different = ["Peace was the way." + source, "No one wants war." + source]
    whole = [char_shingles(normal_form(t), 5) for t in different]
    assert jaccard(*whole) >= THRESHOLD  # what the test guards against
    assert group_near_duplicates(different).groups == [0, 1]
    same = [
        'You\'re dead, Jim. -- McCoy, "Amok Time", stardate 3372.7',
        'You\'re dead, Jim. -- McCoy, "The Tholian Web", stardate unknown',
    ]
    assert group_near_duplicates(same).groups == [0, 0]


def test_equal_normal_forms_join_and_empty_ones_do_not() -> None:
    texts = ["Foo bar. -- Baz", "foo bar -- baz", "!!!", "???", "* * *"]
    assert jaccard(shingles(texts[0]), shingles(texts[1])) < THRESHOLD
    assert group_near_duplicates(texts).groups == [0, 0, 2, 3, 4]


def test_the_same_signatures_and_groups_in_every_process() -> None:
    """Nothing depends on Python's per-process string hashing (set order, ``hash``)."""
    texts = corpus(3)
    grouping = group_near_duplicates(texts)
    signatures = minhash([shingles(t) for t in texts[:20]], 16)
    expected = [grouping.groups, [list(p) for p in grouping.pairs], signatures.tolist()]
    code = (
        "import json, sys\n"
        "from surety_serving.data.near_duplicates import group_near_duplicates, minhash, shingles\n"
        "texts = json.load(sys.stdin)\n"
        "g = group_near_duplicates(texts)\n"
        "s = minhash([shingles(t) for t in texts[:20]], 16)\n"
        "print(json.dumps([g.groups, g.pairs, s.tolist()]))\n"
    )
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert json.loads(done.stdout) == expected
    assert len(set(grouping.groups)) < len(texts)
