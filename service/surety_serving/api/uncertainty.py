"""``POST /v2/models/{model}[/versions/{version}]/uncertainty``: score plus OOD and reliability."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from surety_serving.api.inference import handle_inference
from surety_serving.api.responses import INFERENCE_OPENAPI, inference_responses
from surety_serving.deps import DataPlaneDep, ModelName, Version
from surety_serving.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["extensions"])
#: 409: the model version was never calibrated.
RESPONSES = inference_responses(409)


@router.post(
    "/uncertainty",
    name="uncertainty",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def uncertainty(model: ModelName, request: Request, plane: DataPlaneDep) -> Response:
    """The infer body in; the score outputs plus mahalanobis_score, ood, sdm_probabilities,
    sdm_q, sdm_d, sdm_reliable and sdm_p_lower. 409 if the model was never calibrated."""
    return await handle_inference(request, plane, plane.uncertainty, model, None)


@router.post(
    "/versions/{version}/uncertainty",
    name="uncertainty",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def uncertainty_version(
    model: ModelName, version: Version, request: Request, plane: DataPlaneDep
) -> Response:
    """``uncertainty`` on one version of the model."""
    return await handle_inference(request, plane, plane.uncertainty, model, version)
