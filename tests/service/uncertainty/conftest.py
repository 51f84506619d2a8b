"""Synthetic labelled data shared by the uncertainty tests."""

from __future__ import annotations

import numpy as np
import pytest


def numpy_scaled_softmax(z: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float64 softmax(scale·z) row-wise: the SDM activation's reference."""
    s = np.asarray(z, dtype=np.float64) * np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def gaussian_classes(
    rng: np.random.Generator, n_per_class: int, means: np.ndarray, cov: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of C Gaussians with the given means [C, F] and a shared covariance [F, F]."""
    chol = np.linalg.cholesky(cov)
    labels = np.repeat(np.arange(len(means)), n_per_class)
    noise = rng.standard_normal((len(labels), cov.shape[0])) @ chol.T
    return means[labels] + noise, labels


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
