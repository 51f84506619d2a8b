"""``POST /v2/models/{model}[/versions/{version}]/uncertainty``: score plus OOD and reliability."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.inference import handle_inference
from service.api.responses import ERROR_RESPONSES
from service.deps import DataPlaneDep
from service.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["extensions"], responses=ERROR_RESPONSES)


@router.post("/uncertainty", name="uncertainty", response_model=InferenceResponse)
@router.post(
    "/versions/{version}/uncertainty", name="uncertainty", response_model=InferenceResponse
)
async def uncertainty(
    model: str,
    request: Request,
    plane: DataPlaneDep,
    version: int | None = None,
) -> Response:
    """The infer body in; the score outputs plus mahalanobis_score, ood, sdm_probabilities,
    sdm_q, sdm_d, sdm_reliable and sdm_p_lower. 409 if the model was never calibrated."""
    return await handle_inference(request, plane, plane.uncertainty, model, version)
