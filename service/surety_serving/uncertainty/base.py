"""What every uncertainty method shares: the data it is fitted on and the interface it serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]
IntArray = NDArray[np.integer]


class ArtifactError(ValueError):
    """A fitted artifact is missing, malformed, or does not match the model it is loaded for."""


@dataclass(frozen=True)
class FeatureSet:
    """Model outputs on a labelled split: per-tap features, logits, and the true labels.

    `taps` maps a tap name (a model output such as ``pooled_3``) to a [N, F] feature matrix.
    """

    taps: Mapping[str, FloatArray]
    logits: FloatArray
    labels: IntArray

    def __post_init__(self) -> None:
        n = self.logits.shape[0]
        if self.logits.ndim != 2:
            raise ValueError(f"logits must be [N, C], got shape {self.logits.shape}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [{n}], got shape {self.labels.shape}")
        for name, features in self.taps.items():
            if features.ndim != 2 or features.shape[0] != n:
                raise ValueError(f"tap {name!r} must be [{n}, F], got shape {features.shape}")

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def predictions(self) -> IntArray:
        return np.asarray(np.argmax(self.logits, axis=1), dtype=np.int64)


class UncertaintyMethod(Protocol):
    """A fitted estimator: evaluated per request on the model's taps and logits."""

    name: ClassVar[str]

    def evaluate(
        self, taps: Mapping[str, FloatArray], logits: FloatArray
    ) -> dict[str, NDArray[Any]]:
        """Per-request outputs (each [B] or [B, C]) for a batch of B requests."""
        ...

    def save(self, directory: Path) -> None:
        """Write the artifact as `<name>.npz` (arrays) + `<name>.json` (scalars) in directory."""
        ...

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read an artifact written by `save`; raise ArtifactError naming the file if invalid."""
        ...
