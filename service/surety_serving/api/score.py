"""``POST /v2/models/{model}[/versions/{version}]/score``: probabilities, index and label."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from surety_serving.api.inference import handle_inference
from surety_serving.api.responses import INFERENCE_OPENAPI, inference_responses
from surety_serving.deps import DataPlaneDep, ModelName, Version
from surety_serving.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["extensions"])
RESPONSES = inference_responses()


@router.post(
    "/score",
    name="score",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def score(model: ModelName, request: Request, plane: DataPlaneDep) -> Response:
    """The infer body in; outputs probabilities, predicted_index and predicted_label.

    Request parameter ``temperature`` (> 0) divides the logits inside the fused softmax.
    """
    return await handle_inference(request, plane, plane.score, model, None)


@router.post(
    "/versions/{version}/score",
    name="score",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def score_version(
    model: ModelName, version: Version, request: Request, plane: DataPlaneDep
) -> Response:
    """``score`` on one version of the model."""
    return await handle_inference(request, plane, plane.score, model, version)
