"""The uncertainty of one served model version, loaded from `<version>/uncertainty/`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty.artifacts import ARTIFACT_DIR
from surety_serving.uncertainty.base import TEXTS
from surety_serving.uncertainty.ood import ServedOOD
from surety_serving.uncertainty.sdm import SDM

#: The outputs `/uncertainty` adds to `/score`'s, in response order, with their OIP datatypes.
UNCERTAINTY_OUTPUTS = {
    "ood_p_value": "FP32",
    "ood": "BOOL",
    "ood_detectors": "BYTES",
    "mahalanobis_score": "FP32",
    "sdm_probabilities": "FP32",
    "sdm_q": "FP32",
    "sdm_d": "FP32",
    "sdm_reliable": "BOOL",
    "sdm_p_lower": "FP32",
    "ood_detector_p_values": "FP32",
}
#: Outputs answered only when a request names them.
ON_REQUEST = ("ood_detector_p_values",)


@dataclass(frozen=True)
class ServedUncertainty:
    """The OOD detector set chosen at calibration and SDM, fitted for one model version."""

    taps: tuple[str, ...]  # every model output the methods read (taps and token score)
    logits: str
    ood: ServedOOD
    sdm: SDM
    level: float  # `ood` is an OOD p-value below it

    @classmethod
    def load(
        cls,
        version_dir: Path,
        taps: tuple[str, ...],
        logits: str,
        output_widths: Mapping[str, int],
        num_classes: int,
        level: float,
    ) -> ServedUncertainty | None:
        """The fitted methods, or None when the version was never calibrated.

        Raises ArtifactError naming the file when an artifact is missing, malformed or does
        not fit the model.
        """
        directory = version_dir / ARTIFACT_DIR
        if not directory.is_dir():
            return None
        ood = ServedOOD.load(directory)
        ood.check_model(output_widths, num_classes)
        sdm = SDM.load(directory)
        sdm.check_model(output_widths, num_classes)
        return cls(taps, logits, ood, sdm, level)

    def evaluate(self, outputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Both methods' outputs for a batch of model outputs (and texts, under ``TEXTS``)."""
        features = {name: outputs[name] for name in self.taps}
        if TEXTS in outputs:
            features[TEXTS] = outputs[TEXTS]
        logits = np.asarray(outputs[self.logits])
        return {
            **self.ood.evaluate(features, logits, self.level),
            **self.sdm.evaluate(features, logits),
        }
