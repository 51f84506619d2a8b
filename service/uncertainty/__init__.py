"""Per-request uncertainty: Mahalanobis OOD scores and SDM calibrated reliability.

`METHODS` is the one registry of methods; each is pure numpy (plus the kernels) and knows
nothing of HTTP, so the same objects serve requests and run offline evaluations.
"""

from service.uncertainty.base import ArtifactError, FeatureSet, UncertaintyMethod
from service.uncertainty.mahalanobis import Mahalanobis
from service.uncertainty.sdm import SDM

METHODS: dict[str, type[Mahalanobis] | type[SDM]] = {
    Mahalanobis.name: Mahalanobis,
    SDM.name: SDM,
}

__all__ = ["METHODS", "SDM", "ArtifactError", "FeatureSet", "Mahalanobis", "UncertaintyMethod"]
