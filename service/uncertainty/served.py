"""The uncertainty methods of one served model version, loaded from `<version>/uncertainty/`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.uncertainty import METHODS
from service.uncertainty.calibrate import ARTIFACT_DIR

#: The outputs `/uncertainty` adds to `/score`'s, in response order, with their OIP datatypes.
UNCERTAINTY_OUTPUTS = {
    "mahalanobis_score": "FP32",
    "ood": "BOOL",
    "sdm_probabilities": "FP32",
    "sdm_q": "FP32",
    "sdm_d": "FP32",
    "sdm_reliable": "BOOL",
    "sdm_p_lower": "FP32",
}


@dataclass(frozen=True)
class ServedUncertainty:
    """Every registered method, fitted for one model version."""

    taps: tuple[str, ...]
    logits: str
    methods: tuple[Any, ...]

    @classmethod
    def load(
        cls,
        version_dir: Path,
        taps: tuple[str, ...],
        logits: str,
        output_widths: Mapping[str, int],
        num_classes: int,
    ) -> ServedUncertainty | None:
        """The fitted methods, or None when the version was never calibrated.

        Raises ArtifactError naming the file when an artifact is missing, malformed or does
        not fit the model.
        """
        directory = version_dir / ARTIFACT_DIR
        if not directory.is_dir():
            return None
        methods = []
        for method in METHODS.values():
            fitted = method.load(directory)
            fitted.check_model(output_widths, num_classes)
            methods.append(fitted)
        return cls(taps, logits, tuple(methods))

    def evaluate(self, outputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Every method's outputs for a batch of model outputs."""
        taps = {tap: outputs[tap] for tap in self.taps}
        logits = np.asarray(outputs[self.logits])
        result: dict[str, NDArray[Any]] = {}
        for method in self.methods:
            result.update(method.evaluate(taps, logits))
        return result
