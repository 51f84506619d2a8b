"""``POST /v2/models/{model}[/versions/{version}]/judge``: an LLM judge's expected score."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from surety_serving.api.inference import handle_inference
from surety_serving.api.responses import INFERENCE_OPENAPI, inference_responses
from surety_serving.deps import DataPlaneDep, ModelName, Version
from surety_serving.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["judge"])
#: 409: the model is not a judge.
RESPONSES = inference_responses(409)


@router.post(
    "/judge",
    name="judge",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def judge(model: ModelName, request: Request, plane: DataPlaneDep) -> Response:
    """The judge's prompt fields as BYTES inputs, one row per judged item: ``expected_score``
    [B], ``score_probabilities`` [B, K] and, when named in ``outputs``, ``layer_scores``
    [B, L+1] (each layer's expected score)."""
    return await handle_inference(request, plane, plane.judge, model, None)


@router.post(
    "/versions/{version}/judge",
    name="judge",
    response_model=InferenceResponse,
    responses=RESPONSES,
    openapi_extra=INFERENCE_OPENAPI,
)
async def judge_version(
    model: ModelName, version: Version, request: Request, plane: DataPlaneDep
) -> Response:
    """The judge's scores from one version of the model."""
    return await handle_inference(request, plane, plane.judge, model, version)
