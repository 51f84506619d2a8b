"""Training a head with the SDM loss on synthetic Gaussians."""

from __future__ import annotations

import numpy as np
import pytest

from surety_serving.uncertainty.sdm_training import train_sdm_head

from .conftest import gaussian_classes

pytestmark = pytest.mark.unit

MEANS = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, 3.0, -1.0]])


def test_trained_head_classifies_and_is_deterministic(rng: np.random.Generator) -> None:
    x, y = gaussian_classes(rng, 150, MEANS, np.eye(3))
    first = train_sdm_head(x, y, 3, shuffles=2, epochs=30, learning_rate=5e-2, k=30, seed=3)
    again = train_sdm_head(x, y, 3, shuffles=2, epochs=30, learning_rate=5e-2, k=30, seed=3)
    np.testing.assert_array_equal(first.weight, again.weight)
    np.testing.assert_array_equal(first.train_indices, again.train_indices)
    assert first.weight.shape == (3, 3) and first.bias.shape == (3,)
    # The split is an even partition of the data.
    both = np.sort(np.concatenate([first.train_indices, first.calibration_indices]))
    np.testing.assert_array_equal(both, np.arange(len(y)))
    accuracy = ((x @ first.weight.T + first.bias).argmax(axis=1) == y).mean()
    assert accuracy > 0.85
    assert np.isfinite(first.calibration_loss)


def test_the_lowest_calibration_loss_split_is_kept(rng: np.random.Generator) -> None:
    x, y = gaussian_classes(rng, 100, MEANS, np.eye(3))
    single = train_sdm_head(x, y, 3, shuffles=1, epochs=5, k=20, seed=0)
    several = train_sdm_head(x, y, 3, shuffles=3, epochs=5, k=20, seed=0)
    # The first split of a 3-shuffle run is the 1-shuffle run; the kept one is no worse.
    assert several.calibration_loss <= single.calibration_loss
