"""What the text OOD detectors cost per text: `genre` and `char_density` scoring texts of a fixed
length, beside scikit-learn's HashingVectorizer turning the same texts into the same n-grams
(word 1- and 2-grams and character 3- to 5-grams of the lowercased text, 2¹⁸ buckets), all
measured in interleaved rounds of the same run (bench/_timing.py).

    .venv/bin/python bench/text_detectors.py [--texts 256] [--length 200] [--runs 30]

The texts are windows of `--length` characters cut from the fortunes test split joined end to
end (`surety data fortunes` prepares it). `char_density` is fitted on the fortunes train split
(the default order); `genre`'s weights are drawn at random, since its cost (the hashing, then a
gather and a dot product per text) does not depend on their values and fitting needs a
background corpus. Each contender handles the texts one call per text ("batch 1", as a request
of one row) and all in one call ("batched"); the figure is median seconds per round / texts.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable

import numpy as np
import sklearn
from _timing import interleaved
from sklearn.feature_extraction.text import HashingVectorizer

from surety_serving.data.fortunes import prepare_fortunes, read_jsonl
from surety_serving.uncertainty.base import TEXTS, FeatureSet
from surety_serving.uncertainty.text_detectors import CharDensity, Genre, genre_features

BUCKETS = 1 << 18


def windows(texts: list[str], count: int, length: int) -> list[str]:
    joined = " ".join(texts)
    if len(joined) < count * length:
        raise SystemExit(f"the test split holds {len(joined)} characters, {count * length} asked")
    return [joined[i * length : (i + 1) * length] for i in range(count)]


def detectors() -> tuple[Genre, CharDensity]:
    train = tuple(example.text for example in read_jsonl(prepare_fortunes().train))
    rows = len(train)
    data = FeatureSet(
        taps={}, logits=np.zeros((rows, 1)), labels=np.zeros(rows, dtype=np.int64), texts=train
    )
    weights = np.random.default_rng(0).normal(size=BUCKETS).astype(np.float32)
    return Genre((), 1.0, weights, 0.0), CharDensity.fit(data, data)


def sklearn_features() -> Callable[[list[str]], object]:
    words = HashingVectorizer(n_features=BUCKETS, ngram_range=(1, 2), alternate_sign=False)
    chars = HashingVectorizer(
        n_features=BUCKETS, analyzer="char", ngram_range=(3, 5), alternate_sign=False
    )
    return lambda texts: words.transform(texts) + chars.transform(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--length", type=int, default=200, help="characters per text")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    texts = windows([e.text for e in read_jsonl(prepare_fortunes().test)], args.texts, args.length)
    genre, density = detectors()
    vectorise = sklearn_features()
    one_by_one = [{TEXTS: np.array([text], dtype=object)} for text in texts]
    batch = {TEXTS: np.array(texts, dtype=object)}
    no_logits = np.zeros((1, 1))

    def each(work: Callable[[str], object]) -> Callable[[], None]:
        def run() -> None:
            for text in texts:
                work(text)

        return run

    contenders: dict[str, Callable[[], object]] = {
        "genre, batch 1": lambda: [genre.score(one, no_logits) for one in one_by_one],
        "genre, batched": lambda: genre.score(batch, no_logits),
        "char_density, batch 1": lambda: [density.score(one, no_logits) for one in one_by_one],
        "char_density, batched": lambda: density.score(batch, no_logits),
        "genre's features alone (hashing, log, norm)": each(lambda t: genre_features(t, BUCKETS)),
        "sklearn HashingVectorizer, batch 1": each(lambda t: vectorise([t])),
        "sklearn HashingVectorizer, batched": lambda: vectorise(texts),
    }
    timings = interleaved(contenders, runs=args.runs)
    print(
        f"{args.texts} texts of {args.length} characters; {platform.machine()}, "
        f"{os.cpu_count()} cores; numpy {np.__version__}, scikit-learn {sklearn.__version__}; "
        f"char_density: {len(density.keys)} keys, order {density.order}; "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print("| contender | µs per text (median) | p90 |")
    print("|---|---|---|")
    for name, timing in timings.items():
        per_text = 1e6 / args.texts
        print(
            f"| {name} | {timing.median * per_text:.1f} | {timing.quantile(0.9) * per_text:.1f} |"
        )


if __name__ == "__main__":
    main()
