"""Server metadata, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.responses import ERROR_RESPONSES, OrjsonResponse
from service.deps import DataPlaneDep
from service.protocol.schemas import Liveness, Readiness, ServerMetadata

router = APIRouter(prefix="/v2", tags=["health"], responses=ERROR_RESPONSES)


@router.get("", name="server_metadata", response_model=ServerMetadata)
async def server_metadata(plane: DataPlaneDep) -> OrjsonResponse:
    """Server name, version and the protocol extensions it serves."""
    return OrjsonResponse(plane.server_metadata())


@router.get("/health/live", name="live", response_model=Liveness)
async def live() -> OrjsonResponse:
    """200 while the process serves HTTP."""
    return OrjsonResponse({"live": True})


@router.get("/health/ready", name="ready", response_model=Readiness)
async def ready(plane: DataPlaneDep) -> OrjsonResponse:
    """200 when the repository loaded (every model, with strict readiness); 503 otherwise."""
    plane.check_ready()
    return OrjsonResponse({"ready": True})
