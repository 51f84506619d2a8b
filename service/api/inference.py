"""The request path shared by the inference routes (infer, score, uncertainty): read the body
within its limits, decode it, call the data plane, encode the answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from service.errors import RequestTooLargeError
from service.protocol.codec import HEADER_LENGTH, decode_request, encode_response
from service.runtime.dataplane import DataPlane
from service.runtime.types import InferRequest, InferResponse

Method = Callable[[str, int | None, InferRequest], Awaitable[InferResponse]]


async def handle_inference(
    request: Request, plane: DataPlane, method: Method, model: str, version: int | None
) -> Response:
    """Serve one inference-style request with ``method`` (a DataPlane method)."""
    infer_request = await read_request(request, plane.settings.max_request_bytes)
    result = await method(model, version, infer_request)
    return inference_response(result, infer_request)


async def read_request(request: Request, limit: int) -> InferRequest:
    """Read the body (refusing more than ``limit`` bytes) and decode the OIP request."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(
            f"request body of {declared} bytes exceeds the {limit}-byte limit"
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return decode_request(b"".join(chunks), request.headers.get(HEADER_LENGTH))


def inference_response(result: InferResponse, request: InferRequest) -> Response:
    """The JSON or binary-extension response."""
    body, media_type, header_length = encode_response(result, request)
    headers = {HEADER_LENGTH: str(header_length)} if header_length else None
    return Response(body, media_type=media_type, headers=headers)
