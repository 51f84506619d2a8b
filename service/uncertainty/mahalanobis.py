"""Mahalanobis out-of-distribution score (Lee et al., NeurIPS 2018), per tap and as an ensemble.

Per tap ℓ the features of each class are modelled as Gaussians with class means μ_c (from true
labels) and one tied covariance Σ, the pooled class-centred maximum-likelihood estimate
Σ = (1/N) Σ_i (f_i − μ_{y_i})(f_i − μ_{y_i})ᵀ, fitted in float64. The tap score is

    M(x) = max_c −(f(x) − μ_c)ᵀ Σ⁺ (f(x) − μ_c)       (higher = more in-distribution)

with Σ⁺ the symmetric pseudo-inverse. Rather than storing Σ⁺ we store the whitening map
W = V Λ^{-1/2} over the eigenvectors whose eigenvalue clears pinvh's cut-off, so the quadratic
form is a squared Euclidean norm ‖Wᵀf − Wᵀμ_c‖²: never negative, no cancellation between large
terms, and finite even when Σ is rank-deficient (N < F, dead or duplicated channels).

Tap scores are combined into one score: by logistic regression when OOD validation data is given
(the paper's protocol), otherwise by averaging the tap scores standardised on in-distribution
calibration data. `ood` is a score below the threshold that keeps `keep_fraction` of the
in-distribution calibration inputs. Input preprocessing (the paper's gradient perturbation) is
not done: it needs a backward pass per tap per request, which the serving path does not have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from service.uncertainty import artifacts
from service.uncertainty.base import ArtifactError, FeatureSet, FloatArray, IntArray

STEM = "mahalanobis"


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
        for start in range(0, z.shape[0], 512):
            diff = z[start : start + 512, None, :] - self.whitened_means[None, :, :]
            out[start : start + 512] = -np.einsum("bcr,bcr->bc", diff, diff).min(axis=1)
        return out


def _fit_logistic(x: NDArray[np.float64], y: NDArray[np.float64], l2: float = 1e-3) -> NDArray[Any]:
    """L2-regularised logistic regression by Newton's method; returns [w..., b]."""
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0  # the intercept is not shrunk
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -500, 500)))
        gradient = design.T @ (p - y) / len(y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(y) + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(theta)), gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta


@dataclass(frozen=True)
class Mahalanobis:
    """The fitted detector: per-tap Gaussians, the ensemble, and the OOD threshold."""

    name: ClassVar[str] = "mahalanobis"

    taps: tuple[str, ...]
    gaussians: tuple[TapGaussian, ...]
    # Ensemble: score = tap_scores_standardised · weights + bias.
    tap_mean: NDArray[np.float64]
    tap_std: NDArray[np.float64]
    weights: NDArray[np.float64]
    bias: float
    ensemble: str  # "logistic" | "standardised-mean"
    threshold: float
    keep_fraction: float

    @classmethod
    def fit(
        cls,
        train: FeatureSet,
        calibration: FeatureSet,
        taps: tuple[str, ...],
        ood_validation: Mapping[str, FloatArray] | None = None,
        keep_fraction: float = 0.95,
    ) -> Self:
        """Fit the Gaussians on train, the ensemble and threshold on calibration (+ OOD data)."""
        if not 0.0 < keep_fraction < 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
        gaussians = tuple(
            TapGaussian.fit(train.taps[tap], train.labels, train.num_classes) for tap in taps
        )
        in_scores = _tap_scores(gaussians, taps, calibration.taps)
        mean = in_scores.mean(axis=0)
        std = np.maximum(in_scores.std(axis=0), 1e-12)
        if ood_validation is None:
            weights = np.full(len(taps), 1.0 / len(taps))
            bias = 0.0
            ensemble = "standardised-mean"
        else:
            ood_scores = _tap_scores(gaussians, taps, ood_validation)
            x = (np.vstack([in_scores, ood_scores]) - mean) / std
            y = np.concatenate([np.ones(len(in_scores)), np.zeros(len(ood_scores))])
            theta = _fit_logistic(x, y)
            weights, bias, ensemble = theta[:-1], float(theta[-1]), "logistic"
        combined = ((in_scores - mean) / std) @ weights + bias
        threshold = float(np.quantile(combined, 1.0 - keep_fraction, method="lower"))
        return cls(
            taps=taps,
            gaussians=gaussians,
            tap_mean=mean,
            tap_std=std,
            weights=weights,
            bias=bias,
            ensemble=ensemble,
            threshold=threshold,
            keep_fraction=keep_fraction,
        )

    def tap_scores(self, taps: Mapping[str, FloatArray]) -> NDArray[np.float64]:
        """Per-tap scores [B, T], in the order of `self.taps`."""
        return _tap_scores(self.gaussians, self.taps, taps)

    def score(self, taps: Mapping[str, FloatArray]) -> NDArray[np.float64]:
        """The ensemble score [B]; higher = more in-distribution."""
        standardised = (self.tap_scores(taps) - self.tap_mean) / self.tap_std
        return np.asarray(standardised @ self.weights + self.bias, dtype=np.float64)

    def evaluate(
        self, taps: Mapping[str, FloatArray], logits: FloatArray
    ) -> dict[str, NDArray[Any]]:
        score = self.score(taps)
        return {
            "mahalanobis_score": score.astype(np.float32),
            "ood": score < self.threshold,
        }

    def save(self, directory: Path) -> None:
        arrays: dict[str, NDArray[Any]] = {
            "tap_mean": self.tap_mean,
            "tap_std": self.tap_std,
            "weights": self.weights,
        }
        for i, gaussian in enumerate(self.gaussians):
            arrays[f"whitening_{i}"] = gaussian.whitening
            arrays[f"whitened_means_{i}"] = gaussian.whitened_means
        meta = {
            "taps": list(self.taps),
            "bias": self.bias,
            "ensemble": self.ensemble,
            "threshold": self.threshold,
            "keep_fraction": self.keep_fraction,
        }
        artifacts.write(directory, STEM, arrays, meta)

    @classmethod
    def load(cls, directory: Path) -> Self:
        arrays, meta = artifacts.read(directory, STEM)
        path = directory / f"{STEM}.npz"
        try:
            taps = tuple(str(t) for t in meta["taps"])
            bias, threshold = float(meta["bias"]), float(meta["threshold"])
            ensemble, keep_fraction = str(meta["ensemble"]), float(meta["keep_fraction"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{directory / (STEM + '.json')}: bad field ({exc})") from exc
        n = len(taps)
        gaussians = []
        for i in range(n):
            whitening = artifacts.require(arrays, path, f"whitening_{i}", (None, None))
            means = artifacts.require(
                arrays, path, f"whitened_means_{i}", (None, whitening.shape[1])
            )
            gaussians.append(TapGaussian(whitening=whitening, whitened_means=means))
        return cls(
            taps=taps,
            gaussians=tuple(gaussians),
            tap_mean=artifacts.require(arrays, path, "tap_mean", (n,)),
            tap_std=artifacts.require(arrays, path, "tap_std", (n,)),
            weights=artifacts.require(arrays, path, "weights", (n,)),
            bias=bias,
            ensemble=ensemble,
            threshold=threshold,
            keep_fraction=keep_fraction,
        )

    def check_model(self, tap_widths: Mapping[str, int], num_classes: int) -> None:
        """Raise ArtifactError if the artifact does not fit a model with these taps and classes."""
        for tap, gaussian in zip(self.taps, self.gaussians, strict=True):
            if tap not in tap_widths:
                raise ArtifactError(f"{STEM}: tap {tap!r} is not an output of the model")
            if gaussian.whitening.shape[0] != tap_widths[tap]:
                raise ArtifactError(
                    f"{STEM}: tap {tap!r} has {tap_widths[tap]} features in the model, "
                    f"{gaussian.whitening.shape[0]} in the artifact"
                )
            if gaussian.whitened_means.shape[0] != num_classes:
                raise ArtifactError(
                    f"{STEM}: {gaussian.whitened_means.shape[0]} classes in the artifact, "
                    f"{num_classes} in the model"
                )


def _tap_scores(
    gaussians: tuple[TapGaussian, ...], names: tuple[str, ...], taps: Mapping[str, FloatArray]
) -> NDArray[np.float64]:
    return np.stack([g.score(taps[name]) for g, name in zip(gaussians, names, strict=True)], axis=1)
