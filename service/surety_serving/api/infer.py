"""``POST /v2/models/{model}[/versions/{version}]/infer``: raw model outputs."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from surety_serving.api.inference import handle_inference
from surety_serving.api.responses import INFERENCE_OPENAPI, inference_responses
from surety_serving.deps import DataPlaneDep, ModelName, Version
from surety_serving.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["inference"])
RESPONSES = inference_responses()


@router.post(
    "/infer",
    name="infer",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def infer(model: ModelName, request: Request, plane: DataPlaneDep) -> Response:
    """OIP inference: JSON tensors or the binary tensor extension, in and out."""
    return await handle_inference(request, plane, plane.dispatch.infer, model, None)


@router.post(
    "/versions/{version}/infer",
    name="infer",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def infer_version(
    model: ModelName, version: Version, request: Request, plane: DataPlaneDep
) -> Response:
    """OIP inference on one version of the model."""
    return await handle_inference(request, plane, plane.dispatch.infer, model, version)
