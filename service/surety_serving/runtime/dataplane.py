"""The data plane: what a transport calls, made of the loaded models (``lifecycle``), admission
and deadlines (``admission``) and task dispatch (``dispatch``).

The REST layer (``surety_serving.api``) parses, calls one method here and serialises; a gRPC
front-end would call the same methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from surety_serving.metrics import Metrics
from surety_serving.protocol.types import InferRequest, InferResponse
from surety_serving.runtime.admission import Admission
from surety_serving.runtime.dispatch import Dispatch
from surety_serving.runtime.lifecycle import Models
from surety_serving.runtime.repository import ModelEntry, ModelVersion
from surety_serving.settings import Settings

#: An inference-style method: (model, version, request, deadline) → response.
Method = Callable[[str, int | None, InferRequest, float], Awaitable[InferResponse]]


class DataPlane:
    """Everything a request needs, behind methods that raise domain errors."""

    def __init__(
        self, entries: dict[str, ModelEntry], settings: Settings, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.models = Models(entries, settings, metrics)
        self.admission = Admission(self.models, metrics)
        self.dispatch = Dispatch(self.models, self.admission, metrics)

    @property
    def entries(self) -> dict[str, ModelEntry]:
        """The repository's entries by model name."""
        return self.models.entries

    @property
    def draining(self) -> bool:
        """Set on SIGTERM: readiness answers 503 while requests are still served."""
        return self.models.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.models.draining = value

    # -- lifecycle and lookup ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the batchers (inside the event loop)."""
        await self.models.start()

    async def stop(self) -> None:
        """Let running batches finish, then stop the batchers and their pools."""
        await self.models.stop()

    def close(self) -> None:
        """The shutdown bound: every request still unanswered, and any new one, gets 503."""
        self.models.close()

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions served."""
        return self.models.server_metadata()

    def check_ready(self) -> None:
        """Raise ServerNotReadyError unless every entry loaded (strict) or one model serves."""
        self.models.check_ready()

    def is_known(self, model: str) -> bool:
        """Whether the repository holds a folder of this name (bounds metric labels)."""
        return self.models.is_known(model)

    def version(self, model: str, version: int | None = None) -> ModelVersion:
        """The named version, or the highest loaded one; 404 if unknown, 503 if not loaded."""
        return self.models.version(model, version)

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        """OIP model metadata; the request-level inputs (what clients send)."""
        return self.models.model_metadata(model, version)

    # -- admission and deadlines -------------------------------------------------------------

    def admitted(
        self, model: str, version: int | None, timeout_s: float | None, arrived: float
    ) -> AbstractContextManager[None]:
        """Hold one of the model's in-flight places while the block runs, or refuse."""
        return self.admission.admitted(model, version, timeout_s, arrived)

    def shed(
        self, model: str, version: int | None, timeout_s: float | None, arrived: float
    ) -> None:
        """Raise what ``admitted`` would for want of room, if anything, at the least cost."""
        self.admission.shed(model, version, timeout_s, arrived)

    def in_flight_limit(self, target: ModelVersion) -> int:
        """Requests of a model served at once."""
        return self.admission.in_flight_limit(target)

    def deadline(
        self,
        model: str,
        version: int | None,
        request: InferRequest,
        timeout_s: float | None,
        arrived: float,
    ) -> float:
        """When the client stops waiting (``time.monotonic()``)."""
        return self.admission.deadline(model, version, request, timeout_s, arrived)

    # -- dispatch ----------------------------------------------------------------------------

    async def infer(
        self, model: str, version: int | None, request: InferRequest, deadline: float
    ) -> InferResponse:
        """Run the model and return the requested raw outputs (all, by default)."""
        return await self.dispatch.infer(model, version, request, deadline)

    def method(self, endpoint: str) -> Method:
        """The method that answers ``endpoint``: ``infer``, or a task endpoint (409 on a
        model whose task does not serve it)."""
        if endpoint == "infer":
            return self.dispatch.infer
        return partial(self.dispatch.serve, endpoint)
