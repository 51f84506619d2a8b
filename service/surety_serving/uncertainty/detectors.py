"""Out-of-distribution detectors: one registry, `DETECTORS`, one entry per method.

docs/uncertainty.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import ArtifactError, FeatureSet, FloatArray
from surety_serving.uncertainty.mahalanobis import (
    TapGaussian,
    TapGaussians,
    prepared,
)
from surety_serving.uncertainty.params import checked, checked_stored
from surety_serving.uncertainty.text_detectors import CharDensity, Genre

#: Similarities per block in the kNN search: bounds the [rows, N] temporary to 32 MiB.
KNN_BLOCK_ELEMENTS = 1 << 22


class Detector(Protocol):
    """A fitted OOD detector; higher scores mean more in-distribution."""

    method: ClassVar[str]  # its key in DETECTORS

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        """Fit on train (and calibration, where the detector standardises); ValueError on
        unknown, missing or mistyped params."""
        ...

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        """Scores [B] of a batch: `features` maps output names to [B, F] (or [B]) arrays."""
        ...

    def params(self) -> dict[str, Any]:
        """The constructor choices, JSON-able; `fit(**params())` fits the same detector."""
        ...

    def arrays(self) -> dict[str, NDArray[Any]]:
        """The fitted state."""
        ...

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        """The detector `params()` and `arrays()` describe. `source` is the `.npz` holding the
        arrays; ArtifactError names it for a missing or misshapen array, and its `.json` sibling
        (where artifacts.write puts the params) for a bad parameter."""
        ...

    def inputs(self) -> dict[str, int]:
        """The feature names it reads, each with the width it expects (1 for a per-row score)."""
        ...


def _train_tap(train: FeatureSet, tap: str) -> FloatArray:
    if tap not in train.taps:
        raise ValueError(f"tap {tap!r} is not in the feature set ({sorted(train.taps)})")
    return train.taps[tap]


@dataclass(frozen=True)
class _LogitsOnly:
    """A detector of the logits alone: no parameters, nothing fitted, no feature read."""

    method: ClassVar[str]

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        checked(cls.method, params, {})
        return cls()

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {}

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        checked_stored(cls.method, params, {}, source)
        return cls()

    def inputs(self) -> dict[str, int]:
        return {}


@dataclass(frozen=True)
class MaxSoftmax(_LogitsOnly):
    """`msp`: the largest softmax probability of the logits."""

    method: ClassVar[str] = "msp"

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        z = np.asarray(logits, dtype=np.float64)
        # exp(z_max − z_max) = 1 is the numerator; shifting by the max keeps every exp ≤ 1.
        return np.asarray(1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))


@dataclass(frozen=True)
class Energy(_LogitsOnly):
    """`energy`: the negative free energy logsumexp(z) at temperature 1."""

    method: ClassVar[str] = "energy"

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        z = np.asarray(logits, dtype=np.float64)
        top = z.max(axis=1)
        return np.asarray(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


_TAP_KINDS: dict[str, type] = {"tap": str, "normalise": bool}


@dataclass(frozen=True)
class ClassMahalanobis:
    """`mahalanobis`: class-conditional Gaussians with a tied covariance on one tap."""

    method: ClassVar[str] = "mahalanobis"

    tap: str
    normalise: bool
    gaussian: TapGaussian

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        s, _, gaussian = cls._class_gaussians(train, params)
        return cls(s["tap"], s["normalise"], gaussian)

    @classmethod
    def _class_gaussians(
        cls, train: FeatureSet, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], NDArray[np.float64], TapGaussian]:
        """(settings, the prepared training features, their class Gaussians)."""
        s = checked(cls.method, params, _TAP_KINDS)
        features = prepared(_train_tap(train, s["tap"]), s["normalise"])
        return s, features, TapGaussian.fit(features, train.labels, train.num_classes)

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        return self.gaussian.score(prepared(features[self.tap], self.normalise))

    def params(self) -> dict[str, Any]:
        return {"tap": self.tap, "normalise": self.normalise}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return self.gaussian.arrays()

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        s = checked_stored(cls.method, params, _TAP_KINDS, source)
        return cls(s["tap"], s["normalise"], TapGaussian.restore(arrays, source))

    def inputs(self) -> dict[str, int]:
        return {self.tap: int(self.gaussian.whitening.shape[0])}


@dataclass(frozen=True)
class RelativeMahalanobis(ClassMahalanobis):
    """`relative_mahalanobis`: the class Gaussians' score relative to one background Gaussian."""

    method: ClassVar[str] = "relative_mahalanobis"

    background: TapGaussian  # one class: the mean and covariance of all training features

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        s, features, gaussian = cls._class_gaussians(train, params)
        background = TapGaussian.fit(features, np.zeros(len(features), dtype=np.int64), 1)
        return cls(s["tap"], s["normalise"], gaussian, background)

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        f = prepared(features[self.tap], self.normalise)
        # max_c −MD_c − (−MD_0): TapGaussian scores are already the negated distances.
        return self.gaussian.score(f) - self.background.score(f)

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {**self.gaussian.arrays(), **self.background.arrays("_background")}

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        s = checked_stored(cls.method, params, _TAP_KINDS, source)
        gaussian = TapGaussian.restore(arrays, source)
        background = TapGaussian.restore(arrays, source, "_background")
        width, background_width = gaussian.whitening.shape[0], background.whitening.shape[0]
        if background_width != width or background.whitened_means.shape[0] != 1:
            raise ArtifactError(
                f"{source}: background Gaussian of {background_width} features and "
                f"{background.whitened_means.shape[0]} means, expected {width} features, 1 mean"
            )
        return cls(s["tap"], s["normalise"], gaussian, background)


_KNN_KINDS: dict[str, type] = {"tap": str, "k": int}


@dataclass(frozen=True)
class DeepKNN:
    """`knn`: minus the distance to the k-th nearest L2-normalised training feature."""

    method: ClassVar[str] = "knn"

    tap: str
    k: int
    train: NDArray[np.float64]  # [N, F], rows of unit norm

    def __post_init__(self) -> None:
        if not 1 <= self.k <= len(self.train):
            raise ValueError(f"knn: k must be in [1, {len(self.train)}], got {self.k}")

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        s = checked(cls.method, params, _KNN_KINDS)
        return cls(s["tap"], s["k"], prepared(_train_tap(train, s["tap"]), normalise=True))

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        queries = prepared(features[self.tap], normalise=True)
        n = len(self.train)
        rows = max(1, KNN_BLOCK_ELEMENTS // n)
        kth_similarity = np.empty(len(queries))
        for start in range(0, len(queries), rows):
            similarities = queries[start : start + rows] @ self.train.T
            # Ascending position n − k holds the k-th largest; partition is O(N) per row.
            kth_similarity[start : start + rows] = np.partition(similarities, n - self.k, axis=1)[
                :, n - self.k
            ]
        # Rounding can push a similarity of identical directions just above 1.
        return -np.sqrt(np.maximum(2.0 - 2.0 * kth_similarity, 0.0))

    def params(self) -> dict[str, Any]:
        return {"tap": self.tap, "k": self.k}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {"train": self.train}

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        s = checked_stored(cls.method, params, _KNN_KINDS, source)
        train = artifacts.require(arrays, source, "train", (None, None))
        try:
            return cls(s["tap"], s["k"], train)
        except ValueError as exc:
            raise ArtifactError(f"{source}: {exc} (array 'train' has {len(train)} rows)") from exc

    def inputs(self) -> dict[str, int]:
        return {self.tap: int(self.train.shape[1])}


_ENSEMBLE_KINDS: dict[str, type] = {"taps": list, "normalise": bool}


def _tap_names(method: str, taps: list[Any]) -> tuple[str, ...]:
    if not taps or not all(isinstance(tap, str) for tap in taps):
        raise ValueError(f"{method}: parameter 'taps' must be a non-empty list of str, got {taps}")
    return tuple(taps)


@dataclass(frozen=True)
class TapEnsemble:
    """`tap_ensemble`: per-tap Mahalanobis scores standardised on calibration, averaged."""

    method: ClassVar[str] = "tap_ensemble"

    ensemble: TapGaussians

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        s = checked(cls.method, params, _ENSEMBLE_KINDS)
        taps = _tap_names(cls.method, s["taps"])
        return cls(TapGaussians.fit(train, calibration, taps, s["normalise"]))

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        return np.asarray(self.ensemble.standardised(features).mean(axis=1))

    def params(self) -> dict[str, Any]:
        return {"taps": list(self.ensemble.taps), "normalise": self.ensemble.normalise}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return self.ensemble.arrays()

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        s = checked_stored(cls.method, params, _ENSEMBLE_KINDS, source)
        try:
            taps = _tap_names(cls.method, s["taps"])
        except ValueError as exc:
            raise ArtifactError(f"{source.with_suffix('.json')}: {exc}") from exc
        return cls(TapGaussians.restore(taps, s["normalise"], arrays, source))

    def inputs(self) -> dict[str, int]:
        return self.ensemble.inputs()


_TOKEN_KINDS: dict[str, type] = {"output": str}


@dataclass(frozen=True)
class TokenDensity:
    """`token_density`: minus a per-row atypicality score the model computes in its graph."""

    method: ClassVar[str] = "token_density"

    output: str

    @classmethod
    def fit(cls, train: FeatureSet, calibration: FeatureSet, **params: Any) -> Self:
        s = checked(cls.method, params, _TOKEN_KINDS)
        _train_tap(train, s["output"])  # fail at calibration, not at the first request
        return cls(s["output"])

    def score(self, features: Mapping[str, FloatArray], logits: FloatArray) -> NDArray[np.float64]:
        value = np.asarray(features[self.output], dtype=np.float64)
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if value.ndim != 1:
            raise ValueError(
                f"{self.method}: {self.output!r} must be [B] or [B, 1], got {value.shape}"
            )
        return -value

    def params(self) -> dict[str, Any]:
        return {"output": self.output}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {}

    @classmethod
    def restore(
        cls, params: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], source: Path
    ) -> Self:
        return cls(checked_stored(cls.method, params, _TOKEN_KINDS, source)["output"])

    def inputs(self) -> dict[str, int]:
        return {self.output: 1}


#: The one table of OOD detectors, by method name.
DETECTORS: dict[str, type[Detector]] = {
    kind.method: kind
    for kind in (
        MaxSoftmax,
        Energy,
        ClassMahalanobis,
        RelativeMahalanobis,
        DeepKNN,
        TapEnsemble,
        TokenDensity,
        Genre,
        CharDensity,
    )
}


def fit_detector(
    train: FeatureSet, calibration: FeatureSet, method: str, params: Mapping[str, Any]
) -> Detector:
    """The registered `method` fitted with params; ValueError for an unknown method."""
    if method not in DETECTORS:
        raise ValueError(f"unknown OOD method {method!r} (known: {sorted(DETECTORS)})")
    return DETECTORS[method].fit(train, calibration, **params)
