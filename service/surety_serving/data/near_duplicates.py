"""Near-duplicate groups of short texts: MinHash over character shingles, LSH banding, exact
Jaccard on the candidates, union-find.

docs/models.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BANDS",
    "PARAMETERS",
    "ROWS",
    "SHINGLE_CHARS",
    "THRESHOLD",
    "Grouping",
    "char_shingles",
    "components",
    "group_near_duplicates",
    "jaccard",
    "minhash",
    "normal_form",
    "shingles",
    "strip_attribution",
]

# Chosen on the fortunes corpus (docs/models.md, "Near-duplicates"): character 5-grams of the
# normal form, pairs at or above this exact Jaccard similarity are near-copies.
SHINGLE_CHARS = 5
THRESHOLD = 0.5
# MinHash signatures of BANDS·ROWS values, cut into BANDS bands of ROWS rows. A pair whose
# shingle sets have Jaccard similarity s agrees on one signature value with probability s, on a
# whole band with s^ROWS, and becomes a candidate (shares a band) with 1 − (1 − s^ROWS)^BANDS:
# near 1 from THRESHOLD up, small for the bulk of unrelated pairs, whose s is near 0.
BANDS = 40
ROWS = 3
# The hash family (a·x + b) mod p over a Mersenne prime: with x < 2³² and a, b < p = 2³¹ − 1,
# a·x + b stays below 2⁶⁴, so unsigned 64-bit arithmetic is exact.
_PRIME = (1 << 31) - 1
_SEED = 20_250_101
#: What the groups depend on, for caches of anything made from them.
PARAMETERS: dict[str, float] = {
    "shingle_chars": SHINGLE_CHARS,
    "threshold": THRESHOLD,
    "bands": BANDS,
    "rows": ROWS,
    "seed": _SEED,
}

_NOT_WORD = re.compile(r"[\W_]+")
_DASH = re.compile(r"\s--+\s*")
# What ends a sentence or a quotation before an attribution, and what an attribution opens with
# besides a capital letter.
_CLOSERS = frozenset(".!?\"')]:;*")
_OPENERS = frozenset("\"'`([")


def normal_form(text: str) -> str:
    """Lowercase letters and digits, every other run of characters one space: the form in which
    trivial variants (case, punctuation, quoting, spacing) are equal."""
    return " ".join(_NOT_WORD.sub(" ", text.lower()).split())


def strip_attribution(text: str) -> str:
    """``text`` without a trailing attribution (``... end. -- Mark Twain``).

    Many cookies close with ``-- Author, "Work"``, often longer than the cookie itself, and one
    author (a Star Trek episode, "The Tao of Programming") closes many unrelated cookies: counted
    as shingles, the shared attribution alone would make them near-copies, while the same quote
    under two attributions would look less alike than it is. An attribution is the last ``--``
    when a sentence or quotation ends before it and a capital letter, quote or bracket opens it
    (a dash inside a sentence is followed by lower case or follows no closing punctuation). A
    cookie that would be left without letters or digits is kept whole.
    """
    dashes = list(_DASH.finditer(text))
    if not dashes:
        return text
    last = dashes[-1]
    body, tail = text[: last.start()], text[last.end() :]
    if not body or body[-1] not in _CLOSERS or not tail:
        return text
    if not (tail[0].isupper() or tail[0] in _OPENERS):
        return text
    return body if normal_form(body) else text


def char_shingles(form: str, size: int) -> frozenset[str]:
    """The character ``size``-grams of ``form``; a shorter form is its own single shingle, an
    empty one has none."""
    if len(form) <= size:
        return frozenset((form,)) if form else frozenset()
    return frozenset(form[i : i + size] for i in range(len(form) - size + 1))


def shingles(text: str) -> frozenset[str]:
    """What near-copies are compared by: the character ``SHINGLE_CHARS``-grams of the normal
    form of ``text`` without its attribution."""
    return char_shingles(normal_form(strip_attribution(text)), SHINGLE_CHARS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b|, and 0 for two empty sets (nothing in common to call a copy)."""
    common = len(a & b)
    union = len(a) + len(b) - common
    return common / union if union else 0.0


def minhash(sets: Sequence[Collection[str]], num_hashes: int) -> npt.NDArray[np.uint64]:
    """[len(sets), num_hashes] MinHash signatures: for each of ``num_hashes`` seeded hash
    functions h, the minimum of h over the set's elements (an empty set gets p everywhere).

    For one h, two sets have the same minimum exactly when the element of their union that h
    puts first lies in both, which happens with probability |a ∩ b| / |a ∪ b|: the fraction of
    agreeing values estimates the Jaccard similarity. Elements are fingerprinted by CRC-32 of
    their UTF-8 bytes and the coefficients come from a fixed seed, so signatures are the same in
    every process (Python's ``hash`` of a string is salted per process).
    """
    rng = np.random.default_rng(_SEED)
    a = rng.integers(1, _PRIME, size=num_hashes, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=num_hashes, dtype=np.uint64)
    # Each distinct element is fingerprinted once; the sets hold indices into the fingerprints.
    vocabulary: dict[str, int] = {}
    members = [
        np.fromiter(
            (vocabulary.setdefault(s, len(vocabulary)) for s in elements),
            dtype=np.int64,
            count=len(elements),
        )
        for elements in sets
    ]
    fingerprints = np.fromiter(
        (zlib.crc32(s.encode("utf-8")) for s in vocabulary), dtype=np.uint64, count=len(vocabulary)
    )
    lengths = np.array([len(m) for m in members], dtype=np.int64)
    signatures = np.full((len(sets), num_hashes), _PRIME, dtype=np.uint64)
    filled = lengths > 0
    if not filled.any():
        return signatures
    flat = np.concatenate(members)
    # Each non-empty set's run in `flat` starts where the previous one ended.
    starts = np.concatenate(([0], np.cumsum(lengths[filled])[:-1]))
    for k in range(num_hashes):
        hashed = (a[k] * fingerprints + b[k]) % _PRIME
        signatures[filled, k] = np.minimum.reduceat(hashed[flat], starts)
    return signatures


def _candidates(signatures: npt.NDArray[np.uint64], bands: int, rows: int) -> npt.NDArray[np.int64]:
    """Pairs (i < j), sorted, whose signatures agree on every row of at least one band."""
    n = len(signatures)
    found = [np.empty(0, dtype=np.int64)]
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows]
        _, bucket, sizes = np.unique(block, axis=0, return_inverse=True, return_counts=True)
        bucket = bucket.reshape(-1)
        for shared in np.flatnonzero(sizes > 1):
            members = np.flatnonzero(bucket == shared)  # ascending, so members[i] < members[j]
            i, j = np.triu_indices(len(members), 1)
            found.append(members[i] * n + members[j])
    keys = np.unique(np.concatenate(found))
    return np.stack([keys // n, keys % n], axis=1)


def components(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find over ``n`` items joined by ``pairs``: each item's component, named by its
    smallest member (the transitive closure of the pairs)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees shallow
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(i), root(j)
        # The smaller root always wins, so a component's root is its smallest member.
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [root(i) for i in range(n)]


@dataclass(frozen=True)
class Grouping:
    """Near-duplicate groups of a list of texts."""

    #: Per text, its group: the index of the group's first text.
    groups: list[int]
    #: The near-copy pairs found, (i, j, exact Jaccard similarity) with i < j.
    pairs: list[tuple[int, int, float]]
    #: How many candidate pairs LSH proposed and the exact Jaccard similarity checked.
    candidates: int


def group_near_duplicates(texts: Sequence[str]) -> Grouping:
    """Group texts whose normal forms are equal or whose shingle sets have Jaccard similarity
    ``THRESHOLD`` or more, closed transitively.

    LSH banding of MinHash signatures proposes the candidate pairs; each is then measured
    exactly, so the estimate's noise decides only which pairs are looked at, never which are
    joined. Deterministic: the same texts give the same groups in any process.
    """
    sets = [shingles(text) for text in texts]
    candidates = _candidates(minhash(sets, BANDS * ROWS), BANDS, ROWS)
    pairs = []
    for i, j in candidates.tolist():
        similarity = jaccard(sets[i], sets[j])
        if similarity >= THRESHOLD:
            pairs.append((i, j, similarity))
    first_of_form: dict[str, int] = {}
    same_form = []
    for index, text in enumerate(texts):
        # An empty normal form (only symbols) says nothing about the text: no match on it.
        if form := normal_form(text):
            same_form.append((first_of_form.setdefault(form, index), index))
    groups = components(len(texts), [(i, j) for i, j, _ in pairs] + same_form)
    return Grouping(groups=groups, pairs=pairs, candidates=len(candidates))
