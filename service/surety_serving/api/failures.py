"""The app's exception handler: every failure answered as ``{"error": ...}`` by the error table,
and counted as a rejection of its model when the table names a reason."""

from __future__ import annotations

from fastapi import Request, Response

from surety_serving.api.errors import handle_error, spec_for
from surety_serving.metrics import Metrics
from surety_serving.runtime.dataplane import DataPlane
from surety_serving.settings import Settings


async def error_response(request: Request, exc: Exception) -> Response:
    """The answer to ``exc``, raised while serving ``request``."""
    settings: Settings = request.app.state.settings
    reason = spec_for(exc).reject_reason
    model = request.path_params.get("model")
    plane: DataPlane | None = getattr(request.state, "dataplane", None)
    if (
        reason is not None
        and model is not None
        and plane is not None
        and plane.models.is_known(model)
    ):
        metrics: Metrics = request.app.state.metrics
        metrics.rejected.labels(model=model, reason=reason).inc()
    return handle_error(request, exc, settings.retry_after_s)
