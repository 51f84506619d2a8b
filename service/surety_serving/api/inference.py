"""The request path shared by the inference routes (infer and the task endpoints).

In order, so that the cheap refusals come before the costly work: the deadline from the
``Request-Timeout`` header, admission (unknown model, draining, a queue that cannot finish in
time: refused before a byte of the body is read), the body within its size, time and buffer
budgets, decoding (in a worker thread when large), the data plane, encoding the answer.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time

from fastapi import Request, Response

from surety_serving.api.uploads import UploadHold
from surety_serving.errors import InvalidInputError, RequestTimeoutError, RequestTooLargeError
from surety_serving.protocol.codec import HEADER_LENGTH, decode_request, encode_response
from surety_serving.protocol.types import InferRequest, InferResponse
from surety_serving.runtime.dataplane import DataPlane
from surety_serving.runtime.dispatch import Method
from surety_serving.settings import Settings

#: The deadline header: seconds (decimal), as ``Retry-After`` counts them.
REQUEST_TIMEOUT = "request-timeout"
#: Bodies and answers larger than this are decoded or encoded in a worker thread, so that no
#: request holds the event loop for more than about a millisecond.
INLINE_CODEC_BYTES = 32 * 1024


async def handle_inference(
    request: Request, plane: DataPlane, method: Method, model: str, version: int | None
) -> Response:
    """Serve one inference-style request with ``method`` (a DataPlane method)."""
    arrived = time.monotonic()
    timeout_s = header_timeout(request.headers.get(REQUEST_TIMEOUT))
    with plane.admission.admitted(model, version, timeout_s, arrived):
        with request.state.uploads.hold() as hold:
            body = await read_body(request, plane.settings, hold)
            decode = functools.partial(
                decode_request,
                body,
                request.headers.get(HEADER_LENGTH),
                max_tensors=plane.settings.max_request_tensors,
                max_elements=plane.settings.max_request_elements,
            )
            if len(body) > INLINE_CODEC_BYTES:
                infer_request = await asyncio.to_thread(decode)
            else:
                infer_request = decode()
        deadline = plane.admission.deadline(model, version, infer_request, timeout_s, arrived)
        result = await method(model, version, infer_request, deadline)
        if sum(tensor.data.nbytes for tensor in result.outputs) > INLINE_CODEC_BYTES:
            return await asyncio.to_thread(inference_response, result, infer_request)
        return inference_response(result, infer_request)


def header_timeout(value: str | None) -> float | None:
    """Seconds from a ``Request-Timeout`` header (None when absent)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInputError(
            f"header Request-Timeout must be a number of seconds > 0, got {value[:40]!r}"
        )
    return seconds


async def read_body(request: Request, settings: Settings, hold: UploadHold) -> bytes:
    """The whole body: at most ``max_request_bytes`` (413), within ``body_timeout_s`` (408),
    held against the server's upload budget (503). A client that goes away mid-body raises
    starlette's ClientDisconnect (counted as 499)."""
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise RequestTooLargeError(
                f"request body of {declared} bytes exceeds the {limit}-byte limit"
            )
        hold.grow_to(int(declared))
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(f"request body exceeds the {limit}-byte limit")
                hold.grow_to(size)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {settings.body_timeout_s:g} s"
        ) from None
    return b"".join(chunks)


def inference_response(result: InferResponse, request: InferRequest) -> Response:
    """The JSON or binary-extension response."""
    body, media_type, header_length = encode_response(result, request)
    headers = {HEADER_LENGTH: str(header_length)} if header_length else None
    return Response(body, media_type=media_type, headers=headers)
