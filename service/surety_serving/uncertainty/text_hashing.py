"""Deterministic hashed n-grams of a text: word 1- and 2-grams and character 3- to 5-grams.

The text is lowercased. Words are the runs of word characters (`re`'s ``\\w``: letters, digits
and the underscore of every script) once every run of other characters is cut out; character
n-grams run over the lowercased text with each run of whitespace made one space and the ends
stripped. Characters are Unicode code points c (UTF-32), so an n-gram of a script outside ASCII
is n characters, not n bytes.

Every n-gram gets a 64-bit hash, computed with numpy over all n-grams of a text at once (a Python
loop runs per text and per n, never per n-gram), in arithmetic mod 2⁶⁴:

- a character n-gram c_i … c_{i+n−1}: the polynomial Σ_j c_{i+j} M^{n−1−j}, built for every i at
  once by Horner's rule, h_n = h_{n−1}[:−1]·M + c[n−1:];
- a word c_0 … c_{L−1}: Σ_j c_j M^j, the sum taken per word by `np.add.reduceat` over the
  products of each character with the power of its offset in the word;
- a word pair (u, v): mix(h_u)·M + h_v, mixing the first so that the pair is not a linear
  function of the two words' characters;

with M an odd constant (multiplication by an odd number is a bijection mod 2⁶⁴). The final hash
is mix(h + k·G), k a number per kind of n-gram (so "abc" as a word and as a 3-gram differ) and
G = ⌊2⁶⁴/φ⌋, where mix is splitmix64's finaliser (xor-shifts and two odd multiplications: a
bijection that spreads every input bit over the output). A bucket is the hash's low bits.

Nothing here depends on the process (Python's `hash()` is salted per process, so it is never
used) or the machine (little-endian encodings and numpy's fixed-width unsigned arithmetic are
the same everywhere). `str.lower`, whitespace and ``\\w`` follow the running Python's Unicode
tables, which change only for characters that a newer Unicode version assigns.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

#: The lengths of the character n-grams.
CHAR_ORDERS = (3, 4, 5)

_BASE = np.uint64(0x100000001B3)  # the polynomial's M: FNV-1's 64-bit prime, odd
_GOLDEN = 0x9E3779B97F4A7C15  # ⌊2⁶⁴/φ⌋: splitmix64's increment between seeds
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SPACE = np.uint64(ord(" "))

# The salts k·G in the order of `ngram_hashes`' parts: words (k = 1), word pairs (k = 2), then
# the character n-grams, whose k is their n.
_SALTS = np.array([k * _GOLDEN % 2**64 for k in (1, 2, *CHAR_ORDERS)], dtype=np.uint64)

_NON_WORD = re.compile(r"\W+")


def _mixed(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finaliser, elementwise (numpy's unsigned arrays wrap mod 2⁶⁴)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    return np.asarray(x ^ (x >> np.uint64(31)))


def _code_points(text: str) -> NDArray[np.uint64]:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.uint64)


def _char_polynomials(text: str) -> list[NDArray[np.uint64]]:
    chars = _code_points(" ".join(text.split()))
    rolling, polynomials = chars, []
    for n in range(2, CHAR_ORDERS[-1] + 1):
        # Both sides have max(len − n + 1, 0) entries, also for texts shorter than n.
        rolling = rolling[:-1] * _BASE + chars[n - 1 :]
        if n in CHAR_ORDERS:
            polynomials.append(rolling)
    return polynomials


def _word_polynomials(text: str) -> list[NDArray[np.uint64]]:
    """[words, word pairs]."""
    chars = _code_points(_NON_WORD.sub(" ", text))
    inside = chars != _SPACE
    starts = inside.copy()
    starts[1:] &= ~inside[:-1]
    positions = np.flatnonzero(inside)
    # The word of each position is the number of word starts at or before it, minus one.
    offsets = positions - np.flatnonzero(starts)[np.cumsum(starts)[positions] - 1]
    terms = chars[positions] * np.power(_BASE, offsets.astype(np.uint64))
    words = (
        np.add.reduceat(terms, np.flatnonzero(starts[positions]))
        if positions.size
        else terms  # no words: reduceat refuses empty indices
    )
    return [words, _mixed(words[:-1]) * _BASE + words[1:]]


def ngram_hashes(text: str) -> NDArray[np.uint64]:
    """The 64-bit hash of every n-gram occurrence: the words, the word pairs, then the character
    3-, 4- and 5-grams, each in text order."""
    lowered = text.lower()
    polynomials = _word_polynomials(lowered) + _char_polynomials(lowered)
    salts = np.repeat(_SALTS, [len(p) for p in polynomials])
    return _mixed(np.concatenate(polynomials) + salts)


def hashed_ngrams(text: str, buckets: int) -> NDArray[np.int64]:
    """The bucket in [0, buckets) of every n-gram occurrence; `buckets` is a power of two."""
    return (ngram_hashes(text) & np.uint64(buckets - 1)).astype(np.int64)
