"""Server metadata, liveness and readiness.

Two routers: the probes stay open when API keys are configured (load balancers have none),
server metadata does not.
"""

from __future__ import annotations

from fastapi import APIRouter

from surety_serving.api.responses import OrjsonResponse, error_responses
from surety_serving.deps import DataPlaneDep
from surety_serving.protocol.schemas import Liveness, Readiness, ServerMetadata

router = APIRouter(prefix="/v2", tags=["health"])
probes = APIRouter(prefix="/v2/health", tags=["health"])


@router.get("", name="server_metadata", response_model=ServerMetadata, responses=error_responses())
async def server_metadata(plane: DataPlaneDep) -> OrjsonResponse:
    """Server name, version and the protocol extensions it serves."""
    return OrjsonResponse(plane.models.server_metadata())


@probes.get("/live", name="live", response_model=Liveness, responses=error_responses())
async def live() -> OrjsonResponse:
    """200 while the process serves HTTP."""
    return OrjsonResponse({"live": True})


@probes.get("/ready", name="ready", response_model=Readiness, responses=error_responses(503))
async def ready(plane: DataPlaneDep) -> OrjsonResponse:
    """200 when the repository loaded (every model, with strict readiness); 503 otherwise."""
    plane.models.check_ready()
    return OrjsonResponse({"ready": True})
