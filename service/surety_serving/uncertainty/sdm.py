"""SDM calibrated reliability (Schmaltz 2025, "SDM Activations" variant), applied post hoc.

docs/uncertainty.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.activation import ScaledSoftmax
from surety_serving.uncertainty.base import ArtifactError, FeatureSet, FloatArray, IntArray

STEM = "sdm"
_ROW_BLOCK = 256


def nearest_neighbours(
    support: FloatArray, queries: FloatArray, k: int, exclude: IntArray | None = None
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Exact L2 k-nearest support points of each query: (indices [B, k], distances [B, k]).

    Ties are broken by support index (a stable sort), so q does not depend on evaluation order.
    `exclude[b]` is a support index to skip for query b (the self-match of a training point).
    """
    s = np.asarray(support, dtype=np.float64)
    s_norms = np.einsum("nf,nf->n", s, s)
    k = min(k, s.shape[0] - (0 if exclude is None else 1))
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    distances = np.empty((queries.shape[0], k))
    for start in range(0, queries.shape[0], _ROW_BLOCK):
        q = np.asarray(queries[start : start + _ROW_BLOCK], dtype=np.float64)
        sq = np.einsum("bf,bf->b", q, q)[:, None] - 2.0 * q @ s.T + s_norms[None, :]
        np.maximum(sq, 0.0, out=sq)
        if exclude is not None:
            rows = np.arange(sq.shape[0])
            sq[rows, exclude[start : start + _ROW_BLOCK]] = np.inf
        order = np.argsort(sq, axis=1, kind="stable")[:, :k]
        indices[start : start + len(q)] = order
        distances[start : start + len(q)] = np.sqrt(np.take_along_axis(sq, order, axis=1))
    return indices, distances


def similarity_q(
    neighbour_indices: NDArray[np.int64],
    support_labels: IntArray,
    support_predictions: IntArray,
    predictions: IntArray,
) -> NDArray[np.int64]:
    """Length of the leading run of neighbours with label = prediction = the query's ŷ."""
    matches = (support_labels[neighbour_indices] == predictions[:, None]) & (
        support_predictions[neighbour_indices] == predictions[:, None]
    )
    # Index of the first mismatch; a row of all matches runs the whole k.
    first_miss = np.where(matches.all(axis=1), matches.shape[1], np.argmin(matches, axis=1))
    return np.asarray(first_miss, dtype=np.int64)


def ecdf_below(sorted_values: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    """#{stored < x} / n; 0 for an empty table."""
    if len(sorted_values) == 0:
        return np.zeros(len(x))
    return np.searchsorted(sorted_values, x, side="left") / len(sorted_values)


def dkw_epsilon(n: NDArray[np.integer] | int, alpha: float) -> NDArray[np.float64]:
    """Dvoretzky–Kiefer–Wolfowitz half-width √(ln(2/(1−α))/(2n)); 1 where n = 0."""
    n_arr = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore"):
        eps = np.sqrt(math.log(2.0 / (1.0 - alpha)) / (2.0 * n_arr))
    return np.where(n_arr > 0, np.minimum(eps, 1.0), 1.0)


def rescaled_q(q: NDArray[np.integer], p_hat: NDArray[np.floating]) -> NDArray[np.float64]:
    """q′ = min(q, (2+q)^p) where p is the sdm probability of the predicted class."""
    qf = np.asarray(q, dtype=np.float64)
    return np.minimum(qf, np.power(2.0 + qf, np.asarray(p_hat, dtype=np.float64)))


def high_reliability_region(
    q_prime: NDArray[np.float64],
    true_class_probability: NDArray[np.floating],
    labels: IntArray,
    num_classes: int,
    alpha: float,
) -> tuple[float, NDArray[np.float64]]:
    """(q′_min, ψ) from calibration data; q′_min = ∞ (and ψ = ∞) when no threshold qualifies.

    ψ_c is the (1−α) empirical quantile (sorted index min(⌊(1−α)n⌋, n−1), no interpolation) of
    the true-class probability over class-c points with q′ ≥ threshold. A class with no such
    point gets ψ_c = ∞: nothing is ever admitted for it at that threshold.
    """
    none = (math.inf, np.full(num_classes, math.inf))
    candidates = np.unique(q_prime[np.floor(q_prime) > 0])
    for threshold in candidates:
        keep = q_prime >= threshold
        psi = np.full(num_classes, math.inf)
        for c in range(num_classes):
            values = np.sort(true_class_probability[keep & (labels == c)])
            if len(values):
                psi[c] = values[min(math.floor((1.0 - alpha) * len(values)), len(values) - 1)]
        if np.all(psi >= alpha):
            return float(threshold), psi
    return none


def _padded(
    tables: Sequence[NDArray[np.float64]],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-class tables as one [C, L] array padded with +inf, and their sizes.

    Counting `grid < x` (or `<=`) along L is then the per-class eCDF count for every class and
    query in one vectorised comparison: the +inf padding never counts. The tables are short
    (the calibration points of one class), so this beats C binary searches per request.
    """
    width = max((len(t) for t in tables), default=0)
    grid = np.full((len(tables), width), np.inf)
    for c, table in enumerate(tables):
        grid[c, : len(table)] = table
    return grid, np.array([len(t) for t in tables], dtype=np.float64)


def _ragged(tables: Sequence[NDArray[np.float64]]) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """Per-class sorted tables as one array + offsets [C+1] (npz holds no ragged arrays)."""
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tables])]).astype(np.int64)
    values = np.concatenate(tables) if tables else np.zeros(0)
    return values.astype(np.float64), offsets


def _unragged(values: NDArray[Any], offsets: NDArray[np.int64]) -> list[NDArray[np.float64]]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


@dataclass(frozen=True)
class SDM:
    """A fitted post-hoc SDM estimator."""

    name: ClassVar[str] = "sdm"

    tap: str
    alpha: float
    k: int
    support_features: NDArray[np.float32]
    support_labels: NDArray[np.int64]
    support_predictions: NDArray[np.int64]
    distance_tables: list[NDArray[np.float64]]  # per class: sorted d₁ of calibration points, q>0
    q_prime_tables: list[NDArray[np.float64]]  # per class: sorted q′ of all calibration points
    q_prime_min: float
    psi: NDArray[np.float64]
    softmax: ScaledSoftmax = field(repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.psi)

    @classmethod
    def fit(
        cls,
        train: FeatureSet,
        calibration: FeatureSet,
        tap: str,
        softmax: ScaledSoftmax,
        alpha: float = 0.95,
        k: int = 1000,
    ) -> Self:
        """Support set from train; distance tables, q′ tables and the HR region from calibration."""
        unfitted = cls._unfitted(train, tap, softmax, alpha, k)
        q, d_nearest = unfitted.similarity(calibration.taps[tap], calibration.predictions)
        return unfitted._calibrated(q, d_nearest, calibration.logits, calibration.labels)

    @classmethod
    def fit_cross_fitted(
        cls,
        labelled: FeatureSet,
        tap: str,
        softmax: ScaledSoftmax,
        alpha: float = 0.95,
        k: int = 1000,
        folds: int = 10,
        seed: int = 0,
    ) -> Self:
        """Every labelled point serves once as calibration, against the other folds' support.

        The points are dealt into `folds` stratified folds (seeded); a point's q and d₁ are
        computed against the support made of the other folds, so it is never its own neighbour,
        and the HR region and the eCDF tables are fitted over all of them at once. The served
        support is the whole labelled set. With small classes this is what makes the DKW bound
        usable: n̂ is the smallest class's count, and it grows by the ratio of labelled to
        calibration points. Its price: the support seen at serving is 1/folds larger than the
        one each calibration point saw (q runs slightly longer at serving), and points the model
        was trained on calibrate with in-sample logits.
        """
        if folds < 2:
            raise ValueError(f"folds must be at least 2, got {folds}")
        labels = labelled.labels
        fold_of = np.empty(len(labels), dtype=np.int64)
        rng = np.random.default_rng(seed)
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            fold_of[members] = np.arange(len(members)) % folds
        served = cls._unfitted(labelled, tap, softmax, alpha, k)
        features = np.asarray(labelled.taps[tap], dtype=np.float32)
        predictions = labelled.predictions
        q = np.zeros(len(labels), dtype=np.int64)
        d_nearest = np.zeros(len(labels))
        for fold in range(folds):
            held = fold_of == fold
            if not held.any():
                continue
            others = replace(
                served,
                support_features=features[~held],
                support_labels=served.support_labels[~held],
                support_predictions=served.support_predictions[~held],
            )
            q[held], d_nearest[held] = others.similarity(features[held], predictions[held])
        return served._calibrated(q, d_nearest, labelled.logits, labels)

    @classmethod
    def _unfitted(
        cls, support: FeatureSet, tap: str, softmax: ScaledSoftmax, alpha: float, k: int
    ) -> Self:
        if not 0.5 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0.5, 1), got {alpha}")
        return cls(
            tap=tap,
            alpha=alpha,
            k=k,
            support_features=np.asarray(support.taps[tap], dtype=np.float32),
            support_labels=support.labels.astype(np.int64),
            support_predictions=support.predictions.astype(np.int64),
            distance_tables=[],
            q_prime_tables=[],
            q_prime_min=math.inf,
            psi=np.full(support.num_classes, math.inf),
            softmax=softmax,
        )

    def _calibrated(
        self,
        q: NDArray[np.int64],
        d_nearest: NDArray[np.float64],
        logits: FloatArray,
        labels: IntArray,
    ) -> Self:
        """The distance and q′ tables and the HR region, from calibration points' q, d₁, z′, y."""
        num_classes = len(self.psi)
        distance_tables = [np.sort(d_nearest[(labels == c) & (q > 0)]) for c in range(num_classes)]
        empty = [c for c, table in enumerate(distance_tables) if len(table) == 0]
        if empty:
            raise ValueError(
                f"classes {empty} have no calibration point with q > 0: every distance would be "
                "out of distribution; use more training or calibration data"
            )
        with_distance = replace(self, distance_tables=distance_tables)
        d = with_distance.distance(d_nearest)
        sdm = with_distance.activation(logits, q, d)
        rows = np.arange(len(sdm))
        q_prime = rescaled_q(q, sdm[rows, np.argmax(logits, axis=1)])
        q_prime_min, psi = high_reliability_region(
            q_prime, sdm[rows, labels], labels, num_classes, self.alpha
        )
        q_prime_tables = [np.sort(q_prime[labels == c]) for c in range(num_classes)]
        return replace(
            with_distance, q_prime_tables=q_prime_tables, q_prime_min=q_prime_min, psi=psi
        )

    @cached_property
    def _support64(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The support set in float64 and its squared norms, computed once per loaded artifact."""
        support = np.asarray(self.support_features, dtype=np.float64)
        return support, np.einsum("nf,nf->n", support, support)

    def similarity(
        self, features: FloatArray, predictions: IntArray
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """(q, d₁) for queries that are not in the support set.

        Equal to `similarity_q` over `nearest_neighbours` lists, without sorting: in
        (distance, index) order the run ends at the first support point that breaks it (wrong
        label or prediction), so q = #{agreeing points before that point}, capped at k. That is
        O(N) per query instead of O(N log N), which matters on the request path.
        """
        support, norms = self._support64
        q = np.empty(len(features), dtype=np.int64)
        nearest = np.empty(len(features))
        index = np.arange(len(norms))
        for start in range(0, len(features), _ROW_BLOCK):
            x = np.asarray(features[start : start + _ROW_BLOCK], dtype=np.float64)
            sq = np.einsum("bf,bf->b", x, x)[:, None] - 2.0 * x @ support.T + norms[None, :]
            np.maximum(sq, 0.0, out=sq)
            predicted = np.asarray(predictions[start : start + _ROW_BLOCK])[:, None]
            agrees = (self.support_labels[None, :] == predicted) & (
                self.support_predictions[None, :] == predicted
            )
            # The first breaking point in (distance, index) order: smallest distance, then index.
            broken = np.where(agrees, np.inf, sq)
            first_break = np.argmin(broken, axis=1)  # lowest index among equal minima
            cut = broken[np.arange(len(x)), first_break][:, None]
            before = (sq < cut) | ((sq == cut) & (index[None, :] < first_break[:, None]))
            q[start : start + len(x)] = np.minimum((agrees & before).sum(axis=1), self.k)
            nearest[start : start + len(x)] = np.sqrt(sq.min(axis=1))
        return q, nearest

    @cached_property
    def _distance_grid(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return _padded(self.distance_tables)

    @cached_property
    def _q_prime_grid(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return _padded(self.q_prime_tables)

    def distance(self, d_nearest: NDArray[np.float64]) -> NDArray[np.float64]:
        """d = min_c [1 − eCDF_c(d₁)], with eCDF_c(x) = #{stored < x}/n_c (0 for no table)."""
        grid, sizes = self._distance_grid
        below = (grid[None, :, :] < np.asarray(d_nearest)[:, None, None]).sum(axis=2)
        quantiles = 1.0 - below / np.maximum(sizes, 1.0)[None, :]
        return np.asarray(quantiles.min(axis=1), dtype=np.float64)

    def activation(
        self, logits: FloatArray, q: NDArray[np.integer], d: NDArray[np.floating]
    ) -> NDArray[np.float32]:
        """softmax(ln(2+q)·d·z′), on the TwoPassSoftmax kernel."""
        scale = np.log(2.0 + np.asarray(q, dtype=np.float64)) * np.asarray(d, dtype=np.float64)
        return self.softmax(logits, scale)

    def evaluate(
        self, taps: Mapping[str, FloatArray], logits: FloatArray
    ) -> dict[str, NDArray[Any]]:
        rows = np.arange(logits.shape[0])
        predictions = np.argmax(logits, axis=1)
        q, d_nearest = self.similarity(taps[self.tap], predictions)
        d = self.distance(d_nearest)
        sdm = self.activation(logits, q, d)
        q_prime = rescaled_q(q, sdm[rows, predictions])
        q_grid, _ = self._q_prime_grid
        n_hat = (q_grid[None, :, :] <= q_prime[:, None, None]).sum(axis=2).min(axis=1)
        d_lower = np.maximum(d - dkw_epsilon(n_hat, self.alpha), 0.0)
        sdm_lower = self.activation(logits, q, d_lower)
        p_lower = sdm_lower[rows, predictions]
        q_prime_lower = rescaled_q(q, p_lower)
        admitted = sdm_lower >= self.psi[None, :]
        singleton = admitted[rows, predictions] & (admitted.sum(axis=1) == 1)
        reliable = (q_prime_lower >= self.q_prime_min) & singleton
        return {
            "sdm_probabilities": sdm,
            "sdm_q": q.astype(np.float32),
            "sdm_d": d.astype(np.float32),
            "sdm_reliable": reliable,
            "sdm_p_lower": p_lower.astype(np.float32),
        }

    def report(self) -> dict[str, Any]:
        """Scalars worth reading after a fit."""
        return {
            "alpha": self.alpha,
            "k": self.k,
            "tap": self.tap,
            "q_prime_min": self.q_prime_min,
            "psi": self.psi.tolist(),
            "support_size": len(self.support_labels),
            "support_per_class": np.bincount(
                self.support_labels, minlength=self.num_classes
            ).tolist(),
            "calibration_per_class": [len(t) for t in self.q_prime_tables],
        }

    def save(self, directory: Path) -> None:
        distance_values, distance_offsets = _ragged(self.distance_tables)
        q_prime_values, q_prime_offsets = _ragged(self.q_prime_tables)
        arrays: dict[str, NDArray[Any]] = {
            "support_features": self.support_features,
            "support_labels": self.support_labels,
            "support_predictions": self.support_predictions,
            "distance_values": distance_values,
            "distance_offsets": distance_offsets,
            "q_prime_values": q_prime_values,
            "q_prime_offsets": q_prime_offsets,
            "psi": self.psi,
        }
        meta = {"tap": self.tap, "alpha": self.alpha, "k": self.k, "q_prime_min": self.q_prime_min}
        artifacts.write(directory, STEM, arrays, meta)

    @classmethod
    def load(cls, directory: Path, softmax: ScaledSoftmax | None = None) -> Self:
        if softmax is None:
            from surety_serving.uncertainty.activation import KernelScaledSoftmax

            softmax = KernelScaledSoftmax()
        arrays, meta = artifacts.read(directory, STEM)
        path = directory / f"{STEM}.npz"
        try:
            tap, alpha, k = str(meta["tap"]), float(meta["alpha"]), int(meta["k"])
            q_prime_min = float(meta["q_prime_min"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{directory / (STEM + '.json')}: bad field ({exc})") from exc
        psi = artifacts.require(arrays, path, "psi", (None,))
        c = len(psi)
        support = artifacts.require(arrays, path, "support_features", (None, None))
        n = support.shape[0]
        tables = {}
        for name in ("distance", "q_prime"):
            offsets = artifacts.require(arrays, path, f"{name}_offsets", (c + 1,))
            values = artifacts.require(arrays, path, f"{name}_values", (int(offsets[-1]),))
            tables[name] = _unragged(values, offsets)
        return cls(
            tap=tap,
            alpha=alpha,
            k=k,
            support_features=support,
            support_labels=artifacts.require(arrays, path, "support_labels", (n,)),
            support_predictions=artifacts.require(arrays, path, "support_predictions", (n,)),
            distance_tables=tables["distance"],
            q_prime_tables=tables["q_prime"],
            q_prime_min=q_prime_min,
            psi=psi,
            softmax=softmax,
        )

    def check_model(self, tap_widths: Mapping[str, int], num_classes: int) -> None:
        """Raise ArtifactError if the artifact does not fit a model with these taps and classes."""
        if self.tap not in tap_widths:
            raise ArtifactError(f"{STEM}: tap {self.tap!r} is not an output of the model")
        if self.support_features.shape[1] != tap_widths[self.tap]:
            raise ArtifactError(
                f"{STEM}: tap {self.tap!r} has {tap_widths[self.tap]} features in the model, "
                f"{self.support_features.shape[1]} in the artifact"
            )
        if self.num_classes != num_classes:
            raise ArtifactError(
                f"{STEM}: {self.num_classes} classes in the artifact, {num_classes} in the model"
            )
