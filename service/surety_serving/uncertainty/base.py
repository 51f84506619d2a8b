"""What every uncertainty method shares: the data it is fitted on and its artifacts' error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]
IntArray = NDArray[np.integer]

#: The key of the request's raw input texts in the `features` a detector scores: a 1-D object
#: array of `str`, one per row. It starts with "@" because it is not a model output (a detector
#: that reads it declares width 0 in `inputs()`, and the model checks skip such keys).
TEXTS = "@texts"


class ArtifactError(ValueError):
    """A fitted artifact is missing, malformed, or does not match the model it is loaded for."""


@dataclass(frozen=True)
class FeatureSet:
    """Model outputs on a labelled split: per-tap features, logits, and the true labels.

    `taps` maps a tap name (a model output such as ``pooled_3``) to a [N, F] feature matrix;
    `texts` holds the split's input texts, in row order, for a text model.
    """

    taps: Mapping[str, FloatArray]
    logits: FloatArray
    labels: IntArray
    texts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = self.logits.shape[0]
        if self.logits.ndim != 2:
            raise ValueError(f"logits must be [N, C], got shape {self.logits.shape}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [{n}], got shape {self.labels.shape}")
        for name, features in self.taps.items():
            if features.ndim != 2 or features.shape[0] != n:
                raise ValueError(f"tap {name!r} must be [{n}, F], got shape {features.shape}")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"texts must have {n} entries, got {len(self.texts)}")

    def features(self) -> dict[str, Any]:
        """What a detector's ``score`` reads: the taps, and the texts under :data:`TEXTS`."""
        if self.texts is None:
            return dict(self.taps)
        return {**self.taps, TEXTS: np.array(self.texts, dtype=object)}

    def rows(self, index: IntArray) -> FeatureSet:
        """The rows ``index`` of every field."""
        return FeatureSet(
            taps={name: features[index] for name, features in self.taps.items()},
            logits=self.logits[index],
            labels=self.labels[index],
            texts=None if self.texts is None else tuple(self.texts[i] for i in index),
        )

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def predictions(self) -> IntArray:
        return np.asarray(np.argmax(self.logits, axis=1), dtype=np.int64)
