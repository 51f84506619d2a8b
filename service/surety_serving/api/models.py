"""Model metadata and model readiness, with and without ``/versions/{version}``.

The unversioned and versioned routes are separate functions so that ``version`` is documented
only where it is: a path parameter of the versioned ones.
"""

from __future__ import annotations

from fastapi import APIRouter

from surety_serving.api.responses import OrjsonResponse, error_responses
from surety_serving.deps import DataPlaneDep, ModelName, Version
from surety_serving.protocol.schemas import ModelMetadata, ModelReadiness

router = APIRouter(prefix="/v2/models/{model}", tags=["models"])

#: 404 unknown model (or version), 503 not loaded; a version that is not an integer is a 400.
MODEL_ERRORS = error_responses(404, 503)
VERSION_ERRORS = error_responses(400, 404, 503)


@router.get("", name="model_metadata", response_model=ModelMetadata, responses=MODEL_ERRORS)
async def model_metadata(model: ModelName, plane: DataPlaneDep) -> OrjsonResponse:
    """Inputs, outputs (-1 = variable dimension), platform and versions of a model."""
    return OrjsonResponse(plane.models.model_metadata(model))


@router.get(
    "/versions/{version}",
    name="model_metadata",
    response_model=ModelMetadata,
    responses=VERSION_ERRORS,
)
async def version_metadata(
    model: ModelName, version: Version, plane: DataPlaneDep
) -> OrjsonResponse:
    """Inputs, outputs (-1 = variable dimension) and platform of one version of a model."""
    return OrjsonResponse(plane.models.model_metadata(model, version))


@router.get("/ready", name="model_ready", response_model=ModelReadiness, responses=MODEL_ERRORS)
async def model_ready(model: ModelName, plane: DataPlaneDep) -> OrjsonResponse:
    """200 when the model has a loaded version, 503 when none loaded, 404 if unknown."""
    plane.models.version(model)
    return OrjsonResponse({"name": model, "ready": True})


@router.get(
    "/versions/{version}/ready",
    name="model_ready",
    response_model=ModelReadiness,
    responses=VERSION_ERRORS,
)
async def version_ready(model: ModelName, version: Version, plane: DataPlaneDep) -> OrjsonResponse:
    """200 when the version is loaded, 503 when it failed to load, 404 if unknown."""
    plane.models.version(model, version)
    return OrjsonResponse({"name": model, "ready": True})
