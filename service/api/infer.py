"""``POST /v2/models/{model}[/versions/{version}]/infer``: raw model outputs."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.inference import handle_inference
from service.api.responses import ERROR_RESPONSES
from service.deps import DataPlaneDep
from service.protocol.schemas import InferenceResponse

router = APIRouter(prefix="/v2/models/{model}", tags=["inference"], responses=ERROR_RESPONSES)


@router.post("/infer", name="infer", response_model=InferenceResponse)
@router.post("/versions/{version}/infer", name="infer", response_model=InferenceResponse)
async def infer(
    model: str,
    request: Request,
    plane: DataPlaneDep,
    version: int | None = None,
) -> Response:
    """OIP inference: JSON tensors or the binary tensor extension, in and out."""
    return await handle_inference(request, plane, plane.infer, model, version)
