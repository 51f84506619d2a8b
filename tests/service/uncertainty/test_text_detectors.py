"""The detectors of the request's text: the hashing against a slow reference and across
processes, each detector against known answers and synthetic corpora, the language model's
normalisation, and the params/arrays round trip."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import TEXTS, ArtifactError, FeatureSet
from surety_serving.uncertainty.detectors import DETECTORS, fit_detector
from surety_serving.uncertainty.evaluation import detection_metrics
from surety_serving.uncertainty.text_detectors import (
    MAX_ORDER,
    CharDensity,
    Genre,
    genre_features,
)
from surety_serving.uncertainty.text_hashing import hashed_ngrams, ngram_hashes

pytestmark = pytest.mark.unit

SOURCE = Path("artifacts/ood.npz")

# --- the hashing against a slow reference ------------------------------------------------------

MASK = 2**64 - 1
BASE = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15


def mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def salted(h: int, kind: int) -> int:
    return mix((h + kind * GOLDEN) & MASK)


def reference_hashes(text: str) -> list[int]:
    """text_hashing's definition, one n-gram at a time in Python integers."""
    lowered = text.lower()
    words = [
        sum(ord(c) * pow(BASE, j, 2**64) for j, c in enumerate(word)) & MASK
        for word in re.findall(r"\w+", lowered)
    ]
    hashes = [salted(h, 1) for h in words]
    hashes += [salted((mix(u) * BASE + v) & MASK, 2) for u, v in itertools.pairwise(words)]
    chars = " ".join(lowered.split())
    for n in (3, 4, 5):
        for i in range(len(chars) - n + 1):
            h = 0
            for c in chars[i : i + n]:
                h = (h * BASE + ord(c)) & MASK
            hashes.append(salted(h, n))
    return hashes


ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
    " \t\n\u00a0\u2003\u3000",
    ".,;:!?'\"()[]-—“”…/\\",
    "éèüßçñøåİΣσςЖжщ中文字日本語한국어",
    "😀🚀👍🏽\U0001f9ea\U00010348",
    "\u0301\u0308\u200d\x00\x7f",
]


def random_texts(rng: np.random.Generator, count: int) -> list[str]:
    pool = "".join(ALPHABETS)
    return [
        "".join(rng.choice(list(pool), size=int(rng.integers(0, 60))).tolist())
        for _ in range(count)
    ]


EDGE_TEXTS = [
    "",
    "a",
    "ab",
    "😀",
    "   \t\n  ",
    "İstanbul ΣΑΣ",
    "a  b",
    "__init__ x_1",
    "中文字日本語",
]


def test_vectorised_hashes_equal_the_reference_one_ngram_at_a_time(
    rng: np.random.Generator,
) -> None:
    for text in EDGE_TEXTS + random_texts(rng, 200):
        expected = np.array(reference_hashes(text), dtype=np.uint64)
        got = ngram_hashes(text)
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, expected, err_msg=repr(text))
        np.testing.assert_array_equal(
            hashed_ngrams(text, 1 << 10), (expected & np.uint64(1023)).astype(np.int64)
        )


def test_counts_of_ngrams_per_kind() -> None:
    # Words ab, cd; the pair (ab, cd); the 3-, 4- and 5-grams of the 6 characters "ab, cd".
    assert len(ngram_hashes("AB,  cd")) == 2 + 1 + 4 + 3 + 2
    assert len(ngram_hashes("")) == len(ngram_hashes(" \n\t ")) == 0


def test_hashes_are_the_same_in_a_fresh_process_with_another_hash_seed(
    rng: np.random.Generator,
) -> None:
    texts = EDGE_TEXTS + random_texts(rng, 20)
    script = (
        "import json, sys\n"
        "from surety_serving.uncertainty.text_hashing import hashed_ngrams\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(json.dumps([hashed_ngrams(t, 1 << 18).tolist() for t in texts]))\n"
    )
    # Another seed of Python's str hash: a hash built on hash() would differ.
    env = {**os.environ, "PYTHONHASHSEED": str(int(rng.integers(1, 2**31)))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(done.stdout) == [hashed_ngrams(t, 1 << 18).tolist() for t in texts]


# --- synthetic corpora -------------------------------------------------------------------------

FUNCTION_WORDS = "the a of and to in is it that with for on as"
KITCHEN = (
    "bake butter flour oven whisk sugar salt pepper simmer boil roast garlic onion "
    "tomato basil dough knead yeast bread soup stew sauce pan pot spoon taste recipe"
)
MACHINE = (
    "kernel process thread socket buffer file descriptor signal memory page cache "
    "driver module device interrupt syscall mutex daemon packet server client binary"
)
CYRILLIC = "жизнь мир слово дом время рука город"


def sentences(
    rng: np.random.Generator, vocabulary: str, count: int, function_share: float = 0.4
) -> tuple[str, ...]:
    """Sentences of 6 to 19 words, each a function word with probability function_share, else
    a word of the vocabulary."""
    content, function = vocabulary.split(), FUNCTION_WORDS.split()

    def sentence() -> str:
        words = [
            str(rng.choice(function if rng.random() < function_share else content))
            for _ in range(int(rng.integers(6, 20)))
        ]
        return " ".join(words).capitalize() + "."

    return tuple(sentence() for _ in range(count))


def split_of(texts: tuple[str, ...]) -> FeatureSet:
    n = len(texts)
    return FeatureSet(
        taps={}, logits=np.zeros((n, 2)), labels=np.zeros(n, dtype=np.int64), texts=texts
    )


def batch(texts: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {TEXTS: np.array(list(texts), dtype=object)}


def scores(detector: Any, texts: tuple[str, ...] | list[str]) -> np.ndarray:
    result = detector.score(batch(texts), np.zeros((len(texts), 2)))
    assert result.shape == (len(texts),) and result.dtype == np.float64
    return np.asarray(result)


def write_jsonl(path: Path, texts: tuple[str, ...]) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in texts))
    return str(path)


@pytest.fixture
def background(rng: np.random.Generator, tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "background.jsonl", sentences(rng, MACHINE, 300))


GENRE_PARAMS = {"buckets": 1 << 12, "c": 1.0}

# --- genre ------------------------------------------------------------------------------------


def test_genre_separates_held_out_texts_of_the_two_corpora(
    rng: np.random.Generator, background: str
) -> None:
    train = split_of(sentences(rng, KITCHEN, 200))
    genre = fit_detector(train, train, "genre", {"background": [background], **GENRE_PARAMS})
    inside, outside = sentences(rng, KITCHEN, 100), sentences(rng, MACHINE, 100)
    assert detection_metrics(scores(genre, inside), scores(genre, outside)).auroc > 0.99


def test_genre_scores_the_logistic_regressions_decision_value(
    rng: np.random.Generator, background: str
) -> None:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    buckets = 1 << 12
    positive = sentences(rng, KITCHEN, 100)
    train = split_of(positive)
    genre = fit_detector(train, train, "genre", {"background": [background], **GENRE_PARAMS})
    assert isinstance(genre, Genre) and genre.buckets == buckets
    lines = Path(background).read_text().splitlines()
    negative = tuple(json.loads(line)["text"] for line in lines)

    def features(rows: tuple[str, ...]) -> Any:
        matrix = sparse.lil_matrix((len(rows), buckets))
        for row, text in enumerate(rows):
            index, values = genre_features(text, buckets)
            matrix[row, index] = values
        return matrix.tocsr()

    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit(features(positive + negative), np.r_[np.ones(100), np.zeros(len(negative))])
    queries = sentences(rng, KITCHEN, 10) + sentences(rng, MACHINE, 10) + ("", "😀")
    np.testing.assert_allclose(
        scores(genre, queries), model.decision_function(features(queries)), rtol=1e-5, atol=1e-5
    )


def test_genre_features_are_unit_log_counts() -> None:
    index, values = genre_features("la la la la", 1 << 16)
    expected: dict[int, int] = {}
    for bucket in hashed_ngrams("la la la la", 1 << 16).tolist():
        expected[bucket] = expected.get(bucket, 0) + 1
    assert index.tolist() == sorted(expected)
    raw = np.log1p([expected[b] for b in sorted(expected)])
    np.testing.assert_allclose(values, raw / np.linalg.norm(raw), rtol=1e-12)
    empty_index, empty_values = genre_features(" ", 1 << 16)
    assert empty_index.size == empty_values.size == 0


# --- char_density -----------------------------------------------------------------------------


def test_char_density_separates_english_like_text_from_random_letters_and_another_script(
    rng: np.random.Generator,
) -> None:
    density = fit_detector(
        split_of(sentences(rng, KITCHEN + " " + MACHINE, 400)), split_of(("x",)), "char_density", {}
    )
    inside = scores(density, sentences(rng, KITCHEN + " " + MACHINE, 100))
    letters = list("abcdefghijklmnopqrstuvwxyz     ")
    noise = ["".join(rng.choice(letters, size=80).tolist()) for _ in range(100)]
    cyrillic = list(sentences(rng, CYRILLIC, 100, function_share=0.0))
    for outside in (noise, cyrillic):
        assert detection_metrics(inside, scores(density, outside)).auroc > 0.99


def probabilities_after(density: CharDensity, context: bytes) -> np.ndarray:
    """p(w | context) for the 256 bytes w, then for END."""
    following = [
        density.byte_log_probabilities(context + bytes([w]))[len(context)] for w in range(256)
    ]
    return np.exp([*following, density.byte_log_probabilities(context)[-1]])


@pytest.mark.parametrize("order", [1, 2, 5, MAX_ORDER])
def test_char_density_is_a_distribution_over_bytes_and_end_in_every_context(
    rng: np.random.Generator, order: int
) -> None:
    texts = (*sentences(rng, KITCHEN, 50), "", "é ü 中", "aaaa")
    density = CharDensity.fit(split_of(texts), split_of(texts), order=order)
    for context in (b"", b"b", b"the ", b"bake the bread", b"\xff\xfe", "中".encode(), b"zzzzzzzz"):
        p = probabilities_after(density, context)
        assert (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-9), context


def test_a_unigram_model_matches_the_hand_computed_discounting() -> None:
    # Outcomes of "ab" and "a": a, b, END, a, END. N = 5 counts over 3 types; one seen once (b),
    # two seen twice, so D = 1 / (1 + 2·2) = 0.2, and each outcome gets
    # p(w) = max(c(w) − D, 0)/N + D·3/N · 1/257.
    density = CharDensity.fit(split_of(("ab", "a")), split_of(("ab",)), order=1)
    lower = 0.2 * 3 / 5 / 257
    expected = {b"a"[0]: 1.8 / 5 + lower, b"b"[0]: 0.8 / 5 + lower, b"z"[0]: lower}
    p = probabilities_after(density, b"")
    for symbol, value in expected.items():
        assert p[symbol] == pytest.approx(value, rel=1e-12)
    assert p[256] == pytest.approx(1.8 / 5 + lower, rel=1e-12)  # END


def test_char_density_is_the_mean_log_probability_per_character(rng: np.random.Generator) -> None:
    density = CharDensity.fit(split_of(sentences(rng, KITCHEN, 30)), split_of(("x",)), order=3)
    for text in ("", "bake", "crème brûlée", "中文"):
        expected = density.byte_log_probabilities(text.encode("utf-8")).sum() / (len(text) + 1)
        assert scores(density, [text])[0] == pytest.approx(expected, rel=1e-12)


# --- both: round trip, parameters, artifacts ----------------------------------------------------


@pytest.fixture
def fitted(rng: np.random.Generator, background: str) -> list[Any]:
    train = split_of(sentences(rng, KITCHEN, 100))
    return [
        fit_detector(train, train, "genre", {"background": [background], **GENRE_PARAMS}),
        fit_detector(train, train, "char_density", {"order": 4}),
    ]


def test_both_are_registered_and_read_the_texts(fitted: list[Any]) -> None:
    assert DETECTORS["genre"] is Genre and DETECTORS["char_density"] is CharDensity
    for detector in fitted:
        assert detector.inputs() == {TEXTS: 0}


def test_params_and_arrays_restore_identical_scores_through_the_files(
    rng: np.random.Generator, fitted: list[Any], tmp_path: Path
) -> None:
    queries = sentences(rng, KITCHEN, 10) + sentences(rng, MACHINE, 10) + ("", "😀 中")
    for detector in fitted:
        directory = tmp_path / detector.method
        artifacts.write(directory, "ood", detector.arrays(), {"params": detector.params()})
        arrays, meta = artifacts.read(directory, "ood")
        restored = DETECTORS[detector.method].restore(meta["params"], arrays, SOURCE)
        np.testing.assert_array_equal(scores(restored, queries), scores(detector, queries))
        assert restored.params() == meta["params"] == detector.params()
        assert restored.inputs() == detector.inputs()


def test_genre_restores_without_its_background_paths(
    rng: np.random.Generator, fitted: list[Any]
) -> None:
    genre = fitted[0]
    restored = Genre.restore(GENRE_PARAMS, genre.arrays(), SOURCE)
    queries = sentences(rng, KITCHEN, 5)
    np.testing.assert_array_equal(scores(restored, queries), scores(genre, queries))


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("genre", {"buckets": 1000}, r"genre: parameter 'buckets' must be a power of two"),
        ("genre", {"c": 0.0}, r"genre: parameter 'c' must be positive"),
        ("genre", {"c": 1}, r"genre: parameter 'c' must be float"),
        ("genre", {"background": []}, r"genre: parameter 'background' must be a non-empty list"),
        ("genre", {"background": ["/nonexistent.jsonl"]}, r"background /nonexistent\.jsonl"),
        ("genre", {"background": "bg.jsonl"}, r"'background' must be list"),
        ("genre", {"ngrams": 3}, r"genre: unknown parameters \['ngrams'\]"),
        ("char_density", {"order": 0}, r"char_density: parameter 'order' must be in \[1, 7\]"),
        ("char_density", {"order": MAX_ORDER + 1}, r"'order' must be in \[1, 7\], got 8"),
        ("char_density", {"order": "5"}, r"'order' must be int"),
    ],
)
def test_bad_params_are_refused_when_fitting(
    rng: np.random.Generator, background: str, method: str, params: dict[str, Any], message: str
) -> None:
    train = split_of(sentences(rng, KITCHEN, 5))
    given = {"background": [background], **params} if method == "genre" else params
    with pytest.raises(ValueError, match=message):
        fit_detector(train, train, method, given)


def test_a_background_line_without_text_is_named(rng: np.random.Generator, tmp_path: Path) -> None:
    path = tmp_path / "bg.jsonl"
    path.write_text('{"text": "fine"}\n\n{"body": "no text"}\n')
    train = split_of(sentences(rng, KITCHEN, 5))
    with pytest.raises(ValueError, match=r"bg\.jsonl:3: no string field 'text'"):
        fit_detector(train, train, "genre", {"background": [str(path)]})


@pytest.mark.parametrize("method", ["genre", "char_density"])
def test_a_split_without_texts_is_refused(background: str, method: str) -> None:
    bare = FeatureSet(taps={}, logits=np.zeros((3, 2)), labels=np.zeros(3, dtype=np.int64))
    params = {"background": [background]} if method == "genre" else {}
    with pytest.raises(ValueError, match=rf"{method}: the train split has no texts"):
        fit_detector(bare, bare, method, params)


def test_texts_must_match_the_rows() -> None:
    with pytest.raises(ValueError, match=r"texts must have 2 entries, got 1"):
        FeatureSet(
            taps={}, logits=np.zeros((2, 2)), labels=np.zeros(2, dtype=np.int64), texts=("a",)
        )


def test_a_batch_without_texts_or_with_other_than_strings_is_refused(fitted: list[Any]) -> None:
    for detector in fitted:
        with pytest.raises(ValueError, match=r"the batch has no '@texts'"):
            detector.score({}, np.zeros((1, 2)))
        with pytest.raises(ValueError, match=r"'@texts' must be a 1-D array of str"):
            detector.score({TEXTS: np.array([b"bytes"], dtype=object)}, np.zeros((1, 2)))
        with pytest.raises(ValueError, match=r"'@texts' must be a 1-D array of str"):
            detector.score({TEXTS: np.array([["a"]], dtype=object)}, np.zeros((1, 2)))


def test_restoring_a_misshapen_array_names_the_file(fitted: list[Any]) -> None:
    genre, density = fitted
    genre_arrays = genre.arrays()
    with pytest.raises(
        ArtifactError,
        match=r"artifacts/ood\.npz: array 'weights' has shape \(100,\), expected \(4096,\)",
    ):
        Genre.restore(
            genre.params(), {**genre_arrays, "weights": genre_arrays["weights"][:100]}, SOURCE
        )
    with pytest.raises(ArtifactError, match=r"artifacts/ood\.npz: array 'bias' missing"):
        Genre.restore(genre.params(), {"weights": genre_arrays["weights"]}, SOURCE)
    with pytest.raises(ArtifactError, match=r"artifacts/ood\.json: genre: parameter 'buckets'"):
        Genre.restore({**genre.params(), "buckets": 4000}, genre_arrays, SOURCE)
    arrays = density.arrays()
    with pytest.raises(ArtifactError, match=r"artifacts/ood\.npz: array 'totals' has shape"):
        CharDensity.restore(density.params(), {**arrays, "totals": arrays["totals"][:-1]}, SOURCE)
    with pytest.raises(ArtifactError, match=r"artifacts/ood\.npz: array 'discounts' has shape"):
        CharDensity.restore({"order": 5}, arrays, SOURCE)
    with pytest.raises(
        ArtifactError, match=r"artifacts/ood\.npz: array 'keys' must be .*ascending"
    ):
        CharDensity.restore(
            density.params(), {**arrays, "keys": arrays["keys"][::-1].copy()}, SOURCE
        )
    with pytest.raises(
        ArtifactError, match=r"artifacts/ood\.json: char_density: parameter 'order'"
    ):
        CharDensity.restore({"order": 9}, arrays, SOURCE)


def test_importing_fitting_a_density_and_scoring_need_neither_scipy_nor_sklearn() -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from surety_serving.uncertainty.base import TEXTS, FeatureSet\n"
        "from surety_serving.uncertainty.detectors import DETECTORS\n"
        "texts = ('some text', 'more text')\n"
        "split = FeatureSet({}, np.zeros((2, 2)), np.zeros(2, dtype=np.int64), texts)\n"
        "genre = DETECTORS['genre'].restore(\n"
        "    {'buckets': 8, 'c': 1.0},\n"
        "    {'weights': np.ones(8, dtype=np.float32), 'bias': np.array(0.0)},\n"
        "    Path('ood.npz'),\n"
        ")\n"
        "density = DETECTORS['char_density'].fit(split, split)\n"
        "batch = {TEXTS: np.array(texts, dtype=object)}\n"
        "genre.score(batch, np.zeros((2, 2)))\n"
        "density.score(batch, np.zeros((2, 2)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'scipy', 'sklearn'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
