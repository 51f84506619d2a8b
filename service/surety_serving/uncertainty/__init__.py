"""Per-request uncertainty: an out-of-distribution score and SDM calibrated reliability.

`detectors.DETECTORS` is the one registry of OOD detectors (the served one is chosen per model
at calibration, `selection.select`); SDM is the one selective-prediction method. Everything here
is numpy (plus the kernels) and knows nothing of HTTP, so the same objects serve requests and run
offline evaluations.
"""

from surety_serving.uncertainty.base import ArtifactError, FeatureSet
from surety_serving.uncertainty.detectors import DETECTORS, Detector
from surety_serving.uncertainty.ood import ServedOOD
from surety_serving.uncertainty.sdm import SDM

__all__ = ["DETECTORS", "SDM", "ArtifactError", "Detector", "FeatureSet", "ServedOOD"]
