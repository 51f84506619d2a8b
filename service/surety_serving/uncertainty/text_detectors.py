"""OOD detectors that read the request's raw text (`base.TEXTS`) instead of model outputs.

Both cost O(length) per text and need nothing but numpy when served.

* `genre` (outlier exposure, Hendrycks et al. 2019): a logistic regression of the training texts
  (in-distribution, label 1) against a background corpus (label 0) on hashed n-gram features
  (`text_hashing`). A text's feature vector is x = v/‖v‖ with v_b = log(1 + n_b), n_b the count
  of its n-grams in bucket b. The logarithm keeps an n-gram that a long text repeats from
  outweighing the many it holds once, and the L2 norm makes x a description of the text's
  composition, not of its length: otherwise wᵀx grows with length and a long text's score says
  how long it is. The classes are weighted to equal total weight, so the score
  s(x) = wᵀx + b is the logit of "in-distribution" under equal priors.
* `char_density`: a byte-level n-gram language model of the training texts alone, with
  interpolated absolute discounting (Ney, Essen & Kneser 1994) down to a uniform distribution.
  The score is the mean log-probability per character, higher = more typical. It needs no
  background, so it also sees text unlike any background (another script, code, noise).

The language model: a text is its UTF-8 bytes followed by END, each predicted from the previous
n − 1 symbols, the history padded on the left with BOS (so the first bytes are predicted from
"start of text"). Over the V = 257 outcomes (256 bytes and END), with h_k the last k symbols,
c(h w) the training count of h followed by w, c(h •) = Σ_w c(h w) and N₁₊(h •) the number of
distinct w seen after h:

    p_{−1}(w) = 1/V
    p_k(w | h_k) = [max(c(h_k w) − D_k, 0) + D_k N₁₊(h_k •) p_{k−1}(w | h_{k−1})] / c(h_k •)

for k = 0 … n − 1 (p_k = p_{k−1} where h_k was never a context). Each level sums to one over w:
the seen counts lose D_k·N₁₊(h_k •) in all, exactly the weight given to the level below, which
sums to one. D_k = n₁/(n₁ + 2n₂), from the numbers n₁, n₂ of (k+1)-grams seen once and twice
(Ney et al.'s estimate), kept in [MIN_DISCOUNT, 1] so that every outcome keeps some probability.
The score of a text of L characters and B bytes is (Σ of the B + 1 log-probabilities) / (L + 1):
per character, counting END as one, so that a script of multi-byte characters is not credited
with the predictable continuation bytes of its characters.

Strings of symbols are stored as exact integers, not hashed into buckets: with digits
d = symbol + 1 ∈ [1, 258], the string d₁ … d_m is the base-259 number Σ_t d_t 259^{m−t}, which
is injective over all lengths m ≤ MAX_ORDER (259⁷ < 2⁶³), so the tables have no collisions and
the model is exactly normalised; the context of an n-gram is its number divided by 259. Counts
are looked up by binary search in the sorted keys, and the tables hold only what the training
texts contain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import TEXTS, ArtifactError, FeatureSet, FloatArray
from surety_serving.uncertainty.params import checked, checked_stored
from surety_serving.uncertainty.text_hashing import hashed_ngrams


def _fitted_texts(method: str, split: str, data: FeatureSet) -> tuple[str, ...]:
    if not data.texts:
        raise ValueError(f"{method}: the {split} split has no texts")
    return data.texts


def _served_texts(method: str, features: Mapping[str, Any]) -> list[str]:
    if TEXTS not in features:
        raise ValueError(f"{method}: the batch has no {TEXTS!r}")
    texts = np.asarray(features[TEXTS], dtype=object)
    if texts.ndim != 1 or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{method}: {TEXTS!r} must be a 1-D array of str")
    return list(texts)


# --- genre -------------------------------------------------------------------------------------

_GENRE_KINDS: dict[str, type] = {"background": list, "buckets": int, "c": float}
_GENRE_STORED_KINDS: dict[str, type] = {"buckets": int, "c": float}
_GENRE_DEFAULTS: dict[str, Any] = {"buckets": 1 << 18, "c": 1.0}


def _check_genre(method: str, s: Mapping[str, Any]) -> None:
    """ValueError unless buckets is a power of two and c a positive finite number."""
    buckets, c = s["buckets"], s["c"]
    if buckets < 2 or buckets & (buckets - 1):
        raise ValueError(f"{method}: parameter 'buckets' must be a power of two ≥ 2, got {buckets}")
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"{method}: parameter 'c' must be positive and finite, got {c}")


def _background_texts(method: str, paths: Sequence[Any]) -> list[str]:
    """The "text" field of every line of the JSONL files; ValueError naming file and line."""
    if not paths or not all(isinstance(path, str) for path in paths):
        raise ValueError(f"{method}: parameter 'background' must be a non-empty list of paths")
    texts = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{method}: background {path}: unreadable ({exc})") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{method}: {path}:{number}: not JSON ({exc})") from exc
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{method}: {path}:{number}: no string field 'text'")
            texts.append(text)
    if not texts:
        raise ValueError(f"{method}: the background files hold no texts")
    return texts


def genre_features(text: str, buckets: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(buckets, values) of x = v/‖v‖, v_b = log(1 + n_b): the nonzero entries, buckets sorted."""
    index, counts = np.unique(hashed_ngrams(text, buckets), return_counts=True)
    values = np.log1p(counts)
    if index.size:
        values /= np.sqrt(values @ values)
    return index, values


@dataclass(frozen=True)
class Genre:
    """`genre`: the logit of a logistic regression of training texts against a background."""

    method: ClassVar[str] = "genre"

    background: tuple[str, ...]  # the files it was fitted on: a record, never read when served
    c: float  # the inverse L2 regularisation strength (scikit-learn's C)
    weights: NDArray[np.float32]  # [buckets]
    bias: float

    @property
    def buckets(self) -> int:
        return len(self.weights)

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        s = checked(cls.method, {**_GENRE_DEFAULTS, **params}, _GENRE_KINDS)
        _check_genre(cls.method, s)
        positive = _fitted_texts(cls.method, "train", train)
        negative = _background_texts(cls.method, s["background"])
        # Offline only: the served side needs numpy alone.
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression

        rows = [genre_features(text, s["buckets"]) for text in (*positive, *negative)]
        indptr = np.cumsum([0] + [len(index) for index, _ in rows])
        matrix = sparse.csr_matrix(
            (np.concatenate([v for _, v in rows]), np.concatenate([i for i, _ in rows]), indptr),
            shape=(len(rows), s["buckets"]),
        )
        labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
        model = LogisticRegression(C=s["c"], class_weight="balanced", max_iter=1000)
        model.fit(matrix, labels)
        return cls(
            tuple(s["background"]),
            s["c"],
            np.asarray(model.coef_[0], dtype=np.float32),
            float(model.intercept_[0]),
        )

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        texts = _served_texts(self.method, features)
        scores = np.empty(len(texts))
        for row, text in enumerate(texts):
            index, values = genre_features(text, self.buckets)
            scores[row] = self.weights[index] @ values
        return scores + self.bias

    def params(self) -> dict[str, Any]:
        return {"background": list(self.background), "buckets": self.buckets, "c": self.c}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {"weights": self.weights, "bias": np.array(self.bias, dtype=np.float64)}

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        stored = dict(params)
        background = stored.pop("background", [])
        s = checked_stored(cls.method, stored, _GENRE_STORED_KINDS, source)
        json_path = source.with_suffix(".json")
        try:
            _check_genre(cls.method, s)
        except ValueError as exc:
            raise ArtifactError(f"{json_path}: {exc}") from exc
        if not isinstance(background, list) or not all(isinstance(p, str) for p in background):
            raise ArtifactError(f"{json_path}: {cls.method}: 'background' must be a list of str")
        weights = artifacts.require(arrays, source, "weights", (s["buckets"],))
        bias = artifacts.require(arrays, source, "bias", ())
        return cls(tuple(background), s["c"], np.asarray(weights, dtype=np.float32), float(bias))

    def inputs(self) -> dict[str, int]:
        return {TEXTS: 0}


# --- char_density ------------------------------------------------------------------------------

_END = 256  # the outcome after a text's last byte
_BOS = 257  # the left padding of the history; never predicted
_OUTCOMES = 257  # V: every byte and END
_RADIX = 259  # digits are symbols + 1, so that no string's number starts with a zero digit

#: The longest n-gram whose base-259 number fits in an int64 (259⁷ < 2⁶³).
MAX_ORDER = 7
#: The smallest discount D_k: the weight of the lower order stays positive even where every
#: n-gram of the training texts was seen more than once.
MIN_DISCOUNT = 0.1

_DENSITY_KINDS: dict[str, type] = {"order": int}
_DENSITY_DEFAULTS: dict[str, Any] = {"order": 5}
_DENSITY_TABLES = ("counts", "totals", "types")


def _check_order(method: str, order: int) -> None:
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"{method}: parameter 'order' must be in [1, {MAX_ORDER}], got {order}")


def _discount(counts: NDArray[np.int64]) -> float:
    """Ney et al.'s D = n₁/(n₁ + 2n₂) of one n-gram length, in [MIN_DISCOUNT, 1]."""
    once, twice = int(np.sum(counts == 1)), int(np.sum(counts == 2))
    return min(max(once / max(once + 2 * twice, 1), MIN_DISCOUNT), 1.0)


def _string_numbers(data: bytes, order: int) -> NDArray[np.int64]:
    """[order + 1, B + 2]: entry [m, p] is the number of the m symbols before position p, for
    the B + 1 predicted positions (the bytes, then END) and one past END. So the history h_k of
    position p is [k, p], and h_k followed by the symbol at p is [k + 1, p + 1]: one array holds
    every context and every n-gram a text needs."""
    digits = np.concatenate(
        [
            np.full(order, _BOS + 1, dtype=np.int64),
            np.frombuffer(data, dtype=np.uint8).astype(np.int64) + 1,
            np.array([_END + 1], dtype=np.int64),
        ]
    )
    positions = len(data) + 2
    numbers = np.zeros((order + 1, positions), dtype=np.int64)
    for m in range(1, order + 1):
        # One more digit on the left: the symbol m back, times 259^{m−1}.
        numbers[m] = numbers[m - 1] + digits[order - m : order - m + positions] * _RADIX ** (m - 1)
    return numbers


@dataclass(frozen=True)
class CharDensity:
    """`char_density`: mean log-probability per character under a byte n-gram model."""

    method: ClassVar[str] = "char_density"

    keys: NDArray[np.int64]  # [K] the numbers of every n-gram and context seen, ascending
    counts: NDArray[np.int32]  # [K] c(s) of s as an n-gram (0 if only a context)
    totals: NDArray[np.int32]  # [K] c(s •) of s as a context (0 if never one)
    types: NDArray[np.int32]  # [K] N₁₊(s •)
    discounts: NDArray[np.float64]  # [order] D_k for the (k+1)-grams

    @property
    def order(self) -> int:
        return len(self.discounts)

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        order = checked(cls.method, {**_DENSITY_DEFAULTS, **params}, _DENSITY_KINDS)["order"]
        _check_order(cls.method, order)
        texts = _fitted_texts(cls.method, "train", train)
        # Row k holds the (k+1)-grams that end at a predicted symbol.
        numbers = np.concatenate(
            [_string_numbers(text.encode("utf-8"), order)[1:, 1:] for text in texts], axis=1
        )
        if numbers.shape[1] > np.iinfo(np.int32).max:
            raise ValueError(f"{cls.method}: more training symbols than int32 counts hold")
        by_length = [np.unique(row, return_counts=True) for row in numbers]
        discounts = np.array([_discount(c) for _, c in by_length])
        # Numbers grow with the length of the string, so the rows' sorted keys concatenate sorted.
        ngrams = np.concatenate([keys for keys, _ in by_length])
        ngram_counts = np.concatenate([c for _, c in by_length])
        contexts, owner = np.unique(ngrams // _RADIX, return_inverse=True)
        keys = np.union1d(ngrams, contexts)
        counts, totals, types = (np.zeros(len(keys), dtype=np.int32) for _ in range(3))
        counts[np.searchsorted(keys, ngrams)] = ngram_counts
        at = np.searchsorted(keys, contexts)
        totals[at] = np.bincount(owner, weights=ngram_counts)
        types[at] = np.bincount(owner)
        return cls(keys, counts, totals, types, discounts)

    def byte_log_probabilities(self, data: bytes) -> NDArray[np.float64]:
        """[B + 1]: ln p of each byte of data, then of END, given the symbols before it."""
        numbers = _string_numbers(data, self.order)
        at = np.minimum(np.searchsorted(self.keys, numbers), len(self.keys) - 1)
        found = self.keys[at] == numbers
        contexts, context_found = at[:-1, :-1], found[:-1, :-1]
        ngrams, ngram_found = at[1:, 1:], found[1:, 1:]
        totals = np.where(context_found, self.totals[contexts], 0.0)
        types = np.where(context_found, self.types[contexts], 0.0)
        counts = np.where(ngram_found, self.counts[ngrams], 0.0)
        # p_k = a_k + b_k p_{k−1}; an unseen context has no counts (a_k = 0) and passes p_{k−1}
        # on (b_k = 1).
        discounts = self.discounts[:, None]
        seen = totals > 0
        denominators = np.where(seen, totals, 1.0)
        a = np.maximum(counts - discounts, 0.0) / denominators
        b = np.where(seen, discounts * types / denominators, 1.0)
        p = np.full(len(data) + 1, 1.0 / _OUTCOMES)
        for a_k, b_k in zip(a, b, strict=True):
            p = a_k + b_k * p
        return np.asarray(np.log(p), dtype=np.float64)

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        texts = _served_texts(self.method, features)
        return np.array(
            [
                self.byte_log_probabilities(text.encode("utf-8")).sum() / (len(text) + 1)
                for text in texts
            ],
            dtype=np.float64,
        )

    def params(self) -> dict[str, Any]:
        return {"order": self.order}

    def arrays(self) -> dict[str, NDArray[Any]]:
        tables = dict(zip(_DENSITY_TABLES, (self.counts, self.totals, self.types), strict=True))
        return {"keys": self.keys, **tables, "discounts": self.discounts}

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        order = checked_stored(cls.method, params, _DENSITY_KINDS, source)["order"]
        try:
            _check_order(cls.method, order)
        except ValueError as exc:
            raise ArtifactError(f"{source.with_suffix('.json')}: {exc}") from exc
        keys = artifacts.require(arrays, source, "keys", (None,))
        size = len(keys)
        tables = [artifacts.require(arrays, source, name, (size,)) for name in _DENSITY_TABLES]
        discounts = artifacts.require(arrays, source, "discounts", (order,))
        if keys.dtype != np.int64 or size == 0 or np.any(keys[1:] <= keys[:-1]):
            raise ArtifactError(f"{source}: array 'keys' must be non-empty ascending int64")
        if not np.all((discounts >= MIN_DISCOUNT) & (discounts <= 1.0)):
            raise ArtifactError(f"{source}: array 'discounts' outside [{MIN_DISCOUNT}, 1]")
        counts, totals, types = (np.asarray(table, dtype=np.int32) for table in tables)
        return cls(keys, counts, totals, types, np.asarray(discounts, dtype=np.float64))

    def inputs(self) -> dict[str, int]:
        return {TEXTS: 0}
