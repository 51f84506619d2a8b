"""Response helpers shared by the routers: orjson bodies and the documented answers.

The error answers are documented from `surety_serving.errors.ERRORS`, the table that also produces
them: a route names the statuses it can send, the table says what each means.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from surety_serving.api.inference import REQUEST_TIMEOUT
from surety_serving.errors import ERRORS, SuretyError
from surety_serving.protocol.codec import BINARY_TYPE, HEADER_LENGTH
from surety_serving.protocol.schemas import ErrorBody, InferenceRequest

#: OpenAPI ``responses`` entries, keyed by status.
Responses = dict[int | str, dict[str, Any]]

#: Models the routes refer to by `schema_ref` but FastAPI never sees: bodies read raw, errors
#: rendered by the exception handlers. `surety_serving.api.openapi` adds them to the document.
REFERENCED_MODELS = (InferenceRequest, ErrorBody)
REF_TEMPLATE = "#/components/schemas/{model}"

#: Any route can fail inside; every route documents it.
INTERNAL_ERROR = 500
#: What a body-reading inference route can answer besides 200 and 500.
INFERENCE_ERRORS = (400, 404, 408, 413, 429, 503, 504)
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson (numpy arrays included).

    A JSONResponse, so that FastAPI documents a route's ``response_model`` as its 200 schema.
    """

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to ``model``'s schema among the document's components."""
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def error_responses(*statuses: int) -> Responses:
    """The ``{"error": ...}`` answers for ``statuses`` and 500, described from `ERRORS`."""
    return {status: _from_table(status) for status in sorted({*statuses, INTERNAL_ERROR})}


def _from_table(status: int) -> dict[str, Any]:
    specs = [(cls, spec) for cls, spec in ERRORS.items() if spec.status == status]
    causes = [cls.__doc__ or "" for cls, _ in specs if issubclass(cls, SuretyError)]
    retry = any(spec.retry_after for _, spec in specs)
    return error_response(status, causes, RETRY_AFTER if retry else {})


def error_response(
    status: int, causes: list[str], headers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One documented error answer: ErrorBody, the status's phrase and causes, and ``headers``
    (OpenAPI header objects by name)."""
    response: dict[str, Any] = {
        "description": "\n".join([HTTPStatus(status).phrase, *(f"- {c}" for c in causes)]),
        # Always JSON, whatever the route's own media type (/metrics answers text).
        "content": {"application/json": {"schema": schema_ref(ErrorBody)}},
    }
    if headers:
        response["headers"] = headers
    return response


def inference_responses(*statuses: int) -> Responses:
    """A 200 in JSON or the binary tensor extension, and the errors of the inference routes."""
    binary = {
        "description": "JSON, or with binary outputs the binary tensor extension",
        "content": {BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            HEADER_LENGTH.title(): {
                "description": "binary answers: the length of the JSON header that starts them",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    }
    return {200: binary, **error_responses(*INFERENCE_ERRORS, *statuses)}


#: ``openapi_extra`` of the inference routes: they read the body raw (JSON, or the binary
#: tensor extension), so FastAPI cannot see it.
INFERENCE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "an InferenceRequest in JSON; or, with the binary tensor extension "
            "(application/octet-stream), the JSON InferenceRequest (as many bytes as "
            f"{HEADER_LENGTH.title()} says) followed by the raw tensors of the inputs that have "
            "parameters.binary_data_size, in their order"
        ),
        "content": {
            "application/json": {"schema": schema_ref(InferenceRequest)},
            BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": REQUEST_TIMEOUT.title(),
            "in": "header",
            "required": False,
            "description": (
                "deadline in seconds after arrival (decimal, e.g. 2.5), past which the answer "
                "is 504; with the body parameter timeout_ms too, the earlier applies; capped by "
                "the server's SURETY_MAX_TIMEOUT_MS"
            ),
            "schema": {"type": "number", "exclusiveMinimum": 0},
        },
        {
            "name": HEADER_LENGTH.title(),
            "in": "header",
            "required": False,
            "description": (
                "binary tensor extension (application/octet-stream bodies): the length of the "
                "JSON header that starts the body"
            ),
            "schema": {"type": "integer", "minimum": 0},
        },
    ],
}
