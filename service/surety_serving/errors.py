"""Domain exceptions and the one table that maps them to HTTP.

Domain code raises these and knows nothing of HTTP; `handle_error` turns any exception into
``{"error": message}`` with the status from `ERRORS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

log = logging.getLogger(__name__)


class SuretyError(Exception):
    """Base of the errors a request can meet; the message is safe to show to clients."""


class InvalidInputError(SuretyError):
    """Malformed or invalid request: bad JSON, shapes, datatypes, names, parameters."""


class ModelNotFoundError(SuretyError):
    """No such model, or no such version of it, in the repository."""


class ModelNotReadyError(SuretyError):
    """The model (version) exists in the repository but did not load."""


class ServerNotReadyError(SuretyError):
    """Not every model in the repository is ready."""


class RequestTooLargeError(SuretyError):
    """The body is larger than the configured limit."""


class QueueFullError(SuretyError):
    """The model's queue cannot take the request: full, or it would not finish in time."""


class ServerBusyError(SuretyError):
    """Uploads already buffered fill the server's budget for request bodies."""


class DrainingError(SuretyError):
    """The server is shutting down and no longer takes (or finishes) this request."""


class RequestTimeoutError(SuretyError):
    """The request body did not arrive within the body timeout."""


class DeadlineExceededError(SuretyError):
    """The request's deadline passed before it could be answered."""


class ClientDisconnectedError(SuretyError):
    """The client went away before its request was read or answered (nobody sees the answer)."""


class InferenceFailedError(SuretyError):
    """ONNX Runtime failed on input that passed validation (a server-side problem)."""


class NotCalibratedError(SuretyError):
    """The model version has no fitted uncertainty artifacts (run `surety calibrate`)."""


class NotAJudgeError(SuretyError):
    """The model is not an LLM judge (``task: judge``): /judge has nothing to answer with."""


class ConfigError(SuretyError):
    """A model repository entry is invalid; raised while loading, never during a request."""


@dataclass(frozen=True)
class ErrorSpec:
    """How one kind of error is answered."""

    status: int
    retry_after: bool = False
    #: label of ``surety_rejected_requests_total`` when the error sheds load.
    reject_reason: str | None = None


ERRORS: dict[type[Exception], ErrorSpec] = {
    InvalidInputError: ErrorSpec(400),
    RequestValidationError: ErrorSpec(400),
    ModelNotFoundError: ErrorSpec(404),
    NotCalibratedError: ErrorSpec(409),
    NotAJudgeError: ErrorSpec(409),
    RequestTooLargeError: ErrorSpec(413, reject_reason="too_large"),
    RequestTimeoutError: ErrorSpec(408),
    QueueFullError: ErrorSpec(429, retry_after=True, reject_reason="queue_full"),
    ServerBusyError: ErrorSpec(503, retry_after=True, reject_reason="uploads_full"),
    DrainingError: ErrorSpec(503, retry_after=True, reject_reason="draining"),
    ModelNotReadyError: ErrorSpec(503, retry_after=True, reject_reason="not_ready"),
    ServerNotReadyError: ErrorSpec(503, retry_after=True),
    DeadlineExceededError: ErrorSpec(504, reject_reason="deadline"),
    # nginx's "client closed request": counted as its own outcome, never logged as a failure.
    ClientDisconnectedError: ErrorSpec(499),
    ClientDisconnect: ErrorSpec(499),
    InferenceFailedError: ErrorSpec(500),
}
INTERNAL = ErrorSpec(500)


def spec_for(exc: Exception) -> ErrorSpec:
    """The table entry of the exception's closest listed class (HTTPException keeps its code)."""
    if isinstance(exc, HTTPException):
        return ErrorSpec(exc.status_code)
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return INTERNAL


def describe_validation(exc: ValidationError | RequestValidationError) -> str:
    """'invalid request: inputs[0].shape: Input should be a valid list' from pydantic errors."""
    parts = []
    for error in exc.errors():
        location = ""
        for item in error["loc"]:
            location += f"[{item}]" if isinstance(item, int) else f".{item}" if location else item
        parts.append(f"{location or 'body'}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


def message_for(exc: Exception, spec: ErrorSpec) -> str:
    """The client-facing message; internal errors never expose their details."""
    if isinstance(exc, RequestValidationError):
        return describe_validation(exc)
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if spec is INTERNAL:
        return "internal server error"
    return str(exc)


def handle_error(request: Request, exc: Exception, retry_after_s: int) -> Response:
    """Build the ``{"error": ...}`` response for any exception raised while serving a request."""
    spec = spec_for(exc)
    if spec.status == 500:  # a fault of ours; refusals (503, 504) are expected under load
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    # An HTTPException's own headers (a 401's WWW-Authenticate challenge) go out with it.
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    if spec.retry_after:
        headers["Retry-After"] = str(retry_after_s)
    body = orjson.dumps({"error": message_for(exc, spec)})
    return Response(body, spec.status, headers=headers, media_type="application/json")
