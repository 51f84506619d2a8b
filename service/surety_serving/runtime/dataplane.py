"""The data plane: what a transport calls, made of the loaded models (``models``: lifecycle,
lookup, readiness), admission and deadlines (``admission``) and task dispatch (``dispatch``).

The REST layer (``surety_serving.api``) parses, calls one of them and serialises; a gRPC
front-end would call the same.
"""

from __future__ import annotations

from surety_serving.metrics import Metrics
from surety_serving.runtime.admission import Admission
from surety_serving.runtime.dispatch import Dispatch
from surety_serving.runtime.lifecycle import Models
from surety_serving.runtime.repository import ModelEntry
from surety_serving.settings import Settings


class DataPlane:
    """Everything a request needs; each part raises domain errors."""

    def __init__(
        self, entries: dict[str, ModelEntry], settings: Settings, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.models = Models(entries, settings, metrics)
        self.admission = Admission(self.models, metrics)
        self.dispatch = Dispatch(self.models, self.admission, metrics)
