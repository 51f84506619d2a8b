"""Response helpers shared by the routers: orjson bodies, request bodies within the limit."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request, Response

from service.errors import RequestTooLargeError
from service.protocol.codec import HEADER_LENGTH, decode_request, encode_response
from service.runtime.types import InferRequest, InferResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"example": {"error": "..."}}}}
    for status, text in (
        (400, "malformed or invalid input"),
        (404, "unknown model or version"),
        (409, "the model has no uncertainty artifacts (run surety calibrate)"),
        (413, "body too large"),
        (429, "queue full (Retry-After)"),
        (503, "not ready (Retry-After)"),
    )
}


class OrjsonResponse(Response):
    """JSON rendered by orjson (numpy arrays included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


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
