"""``GET /metrics``: Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from surety_serving.api.responses import error_responses
from surety_serving.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    name="metrics",
    response_class=PlainTextResponse,
    response_description="the Prometheus text exposition format",
    responses=error_responses(),
)
async def metrics(registry: MetricsDep) -> Response:
    """Every surety_* metric plus the process collector."""
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
