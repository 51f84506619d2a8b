"""Domain exceptions and the one table that says how each is answered.

Domain code raises these and knows nothing of HTTP; ``surety_serving.api.errors.handle_error`` turns
any exception into ``{"error": message}`` with the status from `ERRORS` (plus the few errors
that only the HTTP stack raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


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


class EndpointNotServedError(SuretyError):
    """The model's task does not serve this endpoint (e.g. /judge on a classifier)."""


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
    ModelNotFoundError: ErrorSpec(404),
    NotCalibratedError: ErrorSpec(409),
    EndpointNotServedError: ErrorSpec(409),
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
    InferenceFailedError: ErrorSpec(500),
}
INTERNAL = ErrorSpec(500)


def spec_for(exc: Exception) -> ErrorSpec:
    """The table entry of the exception's closest listed class."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return INTERNAL


class Located(Protocol):
    """pydantic's ValidationError, and FastAPI's RequestValidationError alike."""

    def errors(self) -> Sequence[Any]: ...


def describe_validation(exc: Located, drop: object = None) -> str:
    """'invalid request: inputs[0].shape: Input should be a valid list' from pydantic errors;
    a first location equal to ``drop`` (a discriminated union's tag) is left out."""
    parts = []
    for error in exc.errors():
        location = ""
        loc = list(error["loc"])
        if drop is not None and loc and loc[0] == drop:
            loc = loc[1:]
        for item in loc:
            location += f"[{item}]" if isinstance(item, int) else f".{item}" if location else item
        parts.append(f"{location or 'body'}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)
