"""Mahalanobis scores (Lee et al., NeurIPS 2018): the class Gaussians of one tap, of several taps.

docs/uncertainty.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import FeatureSet, FloatArray, IntArray

#: Standard deviations below this are taken as this: a constant score standardises to 0, not nan.
STD_FLOOR = 1e-12
#: Rows per block when scoring, bounding the [rows, C, r] difference temporary.
BLOCK_ROWS = 512


def prepared(features: FloatArray, normalise: bool) -> NDArray[np.float64]:
    """Features as float64, each row scaled to unit L2 norm when `normalise` (zero rows stay 0)."""
    f = np.asarray(features, dtype=np.float64)
    if not normalise:
        return f
    # Dividing by the row's largest magnitude first keeps ‖f‖² from underflowing (or overflowing)
    # for tiny (huge) rows. The norm is then ≥ 1 unless the row is 0, which has no direction and
    # stays 0 (divided by 1, not by 0).
    largest = np.abs(f).max(axis=1, keepdims=True)
    scaled = f / np.where(largest > 0, largest, 1.0)
    return np.asarray(scaled / np.maximum(np.linalg.norm(scaled, axis=1, keepdims=True), 1.0))


def standardisation(scores: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Column means and standard deviations (floored at STD_FLOOR) of scores [N, K]."""
    return scores.mean(axis=0), np.maximum(scores.std(axis=0), STD_FLOOR)


@dataclass(frozen=True)
class TapGaussian:
    """Class means and tied covariance of one tap, stored whitened: W [F, r], Wᵀμ_c [C, r]."""

    whitening: NDArray[np.float64]
    whitened_means: NDArray[np.float64]

    @classmethod
    def fit(cls, features: FloatArray, labels: IntArray, num_classes: int) -> TapGaussian:
        f = np.asarray(features, dtype=np.float64)
        counts = np.bincount(labels, minlength=num_classes)
        if np.any(counts == 0):
            missing = np.flatnonzero(counts == 0).tolist()
            raise ValueError(f"classes {missing} have no training samples: their mean is undefined")
        means = np.zeros((num_classes, f.shape[1]))
        np.add.at(means, labels, f)
        means /= counts[:, None]
        centred = f - means[labels]
        covariance = centred.T @ centred / f.shape[0]
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        # scipy.linalg.pinvh's default cut-off: eigenvalues below λ_max·F·eps are treated as 0.
        cutoff = max(eigenvalues.max(), 0.0) * covariance.shape[0] * np.finfo(np.float64).eps
        keep = eigenvalues > cutoff
        whitening = eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])
        return cls(whitening=whitening, whitened_means=means @ whitening)

    def score(self, features: FloatArray) -> NDArray[np.float64]:
        """max_c −(f − μ_c)ᵀ Σ⁺ (f − μ_c) for each row of features [B, F]."""
        z = np.asarray(features, dtype=np.float64) @ self.whitening
        out = np.empty(z.shape[0])
        # Differences, not the expanded ‖z‖² − 2zᵀm + ‖m‖², which cancels badly far from the means;
        # in row blocks to bound the [rows, C, r] temporary.
        for start in range(0, z.shape[0], BLOCK_ROWS):
            diff = z[start : start + BLOCK_ROWS, None, :] - self.whitened_means[None, :, :]
            out[start : start + BLOCK_ROWS] = -np.einsum("bcr,bcr->bc", diff, diff).min(axis=1)
        return out

    def arrays(self, suffix: str = "") -> dict[str, NDArray[Any]]:
        """The fitted state as `whitening<suffix>`, `whitened_means<suffix>`."""
        return {
            f"whitening{suffix}": self.whitening,
            f"whitened_means{suffix}": self.whitened_means,
        }

    @classmethod
    def restore(
        cls, arrays: Mapping[str, NDArray[Any]], path: Path, suffix: str = ""
    ) -> TapGaussian:
        """Read what `arrays(suffix)` wrote; ArtifactError naming path if missing or misshapen."""
        whitening = artifacts.require(arrays, path, f"whitening{suffix}", (None, None))
        means = artifacts.require(
            arrays, path, f"whitened_means{suffix}", (None, whitening.shape[1])
        )
        return cls(whitening=whitening, whitened_means=means)


@dataclass(frozen=True)
class TapGaussians:
    """One TapGaussian per tap, each tap's score standardised on in-distribution calibration."""

    taps: tuple[str, ...]
    normalise: bool
    gaussians: tuple[TapGaussian, ...]
    tap_mean: NDArray[np.float64]
    tap_std: NDArray[np.float64]

    @classmethod
    def fit(
        cls, train: FeatureSet, calibration: FeatureSet, taps: tuple[str, ...], normalise: bool
    ) -> TapGaussians:
        """Gaussians fitted on train; the per-tap standardisation on calibration."""
        if not taps:
            raise ValueError("the tap ensemble needs at least one tap")
        for tap in taps:
            if tap not in train.taps:
                raise ValueError(f"tap {tap!r} is not in the feature set ({sorted(train.taps)})")
        gaussians = tuple(
            TapGaussian.fit(prepared(train.taps[tap], normalise), train.labels, train.num_classes)
            for tap in taps
        )
        unstandardised = cls(taps, normalise, gaussians, np.zeros(len(taps)), np.ones(len(taps)))
        mean, std = standardisation(unstandardised.scores(calibration.taps))
        return cls(taps, normalise, gaussians, mean, std)

    def scores(self, features: Mapping[str, FloatArray]) -> NDArray[np.float64]:
        """Raw per-tap scores M_ℓ [B, T], in the order of `self.taps`."""
        return np.stack(
            [
                gaussian.score(prepared(features[tap], self.normalise))
                for tap, gaussian in zip(self.taps, self.gaussians, strict=True)
            ],
            axis=1,
        )

    def standardised(self, features: Mapping[str, FloatArray]) -> NDArray[np.float64]:
        """Standardised per-tap scores z_ℓ [B, T]."""
        return (self.scores(features) - self.tap_mean) / self.tap_std

    def arrays(self) -> dict[str, NDArray[Any]]:
        state: dict[str, NDArray[Any]] = {"tap_mean": self.tap_mean, "tap_std": self.tap_std}
        for i, gaussian in enumerate(self.gaussians):
            state.update(gaussian.arrays(f"_{i}"))
        return state

    @classmethod
    def restore(
        cls,
        taps: tuple[str, ...],
        normalise: bool,
        arrays: Mapping[str, NDArray[Any]],
        path: Path,
    ) -> TapGaussians:
        """Read what `arrays()` wrote for these taps; ArtifactError naming path if invalid."""
        n = len(taps)
        return cls(
            taps=taps,
            normalise=normalise,
            gaussians=tuple(TapGaussian.restore(arrays, path, f"_{i}") for i in range(n)),
            tap_mean=artifacts.require(arrays, path, "tap_mean", (n,)),
            tap_std=artifacts.require(arrays, path, "tap_std", (n,)),
        )

    def inputs(self) -> dict[str, int]:
        """Tap name → the feature width its Gaussian was fitted on."""
        return {
            tap: int(gaussian.whitening.shape[0])
            for tap, gaussian in zip(self.taps, self.gaussians, strict=True)
        }
