"""Model metadata and model readiness, with and without ``/versions/{version}``."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.responses import ERROR_RESPONSES, OrjsonResponse
from service.deps import DataPlaneDep
from service.protocol.schemas import ModelMetadata, ModelReadiness

router = APIRouter(prefix="/v2/models/{model}", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", name="model_metadata", response_model=ModelMetadata)
@router.get("/versions/{version}", name="model_metadata", response_model=ModelMetadata)
async def model_metadata(
    model: str, plane: DataPlaneDep, version: int | None = None
) -> OrjsonResponse:
    """Inputs, outputs (-1 = variable dimension), platform and versions of a model."""
    return OrjsonResponse(plane.model_metadata(model, version))


@router.get("/ready", name="model_ready", response_model=ModelReadiness)
@router.get("/versions/{version}/ready", name="model_ready", response_model=ModelReadiness)
async def model_ready(
    model: str, plane: DataPlaneDep, version: int | None = None
) -> OrjsonResponse:
    """200 when the model (version) is loaded, 503 when it failed to load, 404 if unknown."""
    plane.version(model, version)
    return OrjsonResponse({"name": model, "ready": True})
