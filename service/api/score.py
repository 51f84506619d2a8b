"""``POST /v2/models/{model}[/versions/{version}]/score``: probabilities, index and label."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.responses import ERROR_RESPONSES, inference_response, read_request
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
    infer_request = await read_request(request, plane.settings.max_request_bytes)
    result = await plane.score(model, version, infer_request)
    return inference_response(result, infer_request)
