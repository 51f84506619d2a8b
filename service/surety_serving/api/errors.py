"""The HTTP side of the error table: the errors only the HTTP stack raises, and the
``{"error": ...}`` response of any exception."""

from __future__ import annotations

import logging

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from surety_serving import errors
from surety_serving.errors import ERRORS, INTERNAL, ErrorSpec, describe_validation

log = logging.getLogger(__name__)

#: Raised by FastAPI and starlette, answered like the domain's errors.
HTTP_ERRORS: dict[type[Exception], ErrorSpec] = {
    RequestValidationError: ErrorSpec(400),
    # nginx's "client closed request", as for ClientDisconnectedError.
    ClientDisconnect: ErrorSpec(499),
}
#: Every error the app answers by the table, domain and HTTP.
ALL_ERRORS: dict[type[Exception], ErrorSpec] = {**ERRORS, **HTTP_ERRORS}


def spec_for(exc: Exception) -> ErrorSpec:
    """The table entry of the exception's closest listed class (HTTPException keeps its code)."""
    if isinstance(exc, HTTPException):
        return ErrorSpec(exc.status_code)
    for cls in type(exc).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    return errors.spec_for(exc)


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
