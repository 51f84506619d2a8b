"""``POST /v2/models/{model}[/versions/{version}]/score``: probabilities, index and label."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.inference import handle_inference
from service.api.responses import ERROR_RESPONSES
from service.deps import DataPlaneDep
from service.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["extensions"], responses=ERROR_RESPONSES)


@router.post("/score", name="score", response_model=InferenceResponse)
@router.post("/versions/{version}/score", name="score", response_model=InferenceResponse)
async def score(
    model: str,
    request: Request,
    plane: DataPlaneDep,
    version: int | None = None,
) -> Response:
    """The infer body in; outputs probabilities, predicted_index and predicted_label.

    Request parameter ``temperature`` (> 0) divides the logits inside the fused softmax.
    """
    return await handle_inference(request, plane, plane.score, model, version)
