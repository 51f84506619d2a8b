"""The one error table: every domain error's status, Retry-After and body."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from surety_serving import errors
from surety_serving.api.errors import handle_error

pytestmark = pytest.mark.unit

CASES = [
    (errors.InvalidInputError("input 'x' is bad"), 400, False, "input 'x' is bad"),
    (errors.ModelNotFoundError("model 'm' is not in the repository"), 404, False, "model 'm'"),
    (errors.RequestTooLargeError("too big"), 413, False, "too big"),
    (errors.QueueFullError("model 'm' has 9 requests queued"), 429, True, "9 requests queued"),
    (errors.ModelNotReadyError("model 'm' is not ready"), 503, True, "is not ready"),
    (errors.ServerNotReadyError("not ready: model 'm'"), 503, True, "not ready"),
    (errors.InferenceFailedError("inference failed for model 'm'"), 500, False, "inference"),
    (RuntimeError("secret detail"), 500, False, "internal server error"),
    (HTTPException(405, "Method Not Allowed"), 405, False, "Method Not Allowed"),
    (
        RequestValidationError([{"loc": ("path", "version"), "msg": "bad int", "type": "x"}]),
        400,
        False,
        "invalid request: path.version: bad int",
    ),
]


def request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": []})


@pytest.mark.parametrize(("exc", "status", "retry", "fragment"), CASES)
def test_every_error_maps_to_its_status_and_body(exc, status, retry, fragment):
    response = handle_error(request(), exc, retry_after_s=3)
    assert response.status_code == status
    assert (response.headers.get("retry-after") == "3") is retry
    body = orjson.loads(response.body)
    assert set(body) == {"error"}
    assert fragment in body["error"]


def test_internal_errors_hide_their_details():
    response = handle_error(request(), RuntimeError("secret detail"), retry_after_s=1)
    assert b"secret" not in response.body


def test_shedding_errors_name_their_rejection_reason():
    reasons = {cls.__name__: spec.reject_reason for cls, spec in errors.ERRORS.items()}
    assert reasons["QueueFullError"] == "queue_full"
    assert reasons["RequestTooLargeError"] == "too_large"
    assert reasons["ModelNotReadyError"] == "not_ready"


def test_the_domain_errors_know_nothing_of_http():
    code = (
        "import sys, surety_serving.errors; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
