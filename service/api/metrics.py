"""``GET /metrics``: Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", name="metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    """Every surety_* metric plus the process collector."""
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
