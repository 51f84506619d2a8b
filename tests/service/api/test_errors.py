"""Every error status with its {"error": ...} body, over HTTP against the real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from surety_kit.payloads import image_request

pytestmark = pytest.mark.model

ROW = [0.0] * 64


def request_with(**changes: object) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "image", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    tensor.update(changes)
    return {"inputs": [tensor]}


BAD_REQUESTS = [
    (request_with(datatype="FP64"), "must be FP32, got FP64"),
    (request_with(datatype="FLOAT"), "inputs[0].datatype"),
    (request_with(shape=[1, 63]), "needs 63 values, data has 64"),
    (request_with(shape=[64]), "must have shape [-1, 64], got [64]"),
    (request_with(shape=[2, 32]), "must have shape [-1, 64], got [2, 32]"),
    (request_with(shape=[1, -64]), "has a negative dimension"),
    (request_with(shape=[0, 64], data=[]), "the batch is empty"),
    (request_with(data=["a"] * 64), "FP32 data must be numbers"),
    (request_with(data=[[0.0] * 64, [0.0]]), "ragged"),
    (request_with(data=[17.0] * 64), "values must lie in [0, 16]"),
    (request_with(data=[-1.0] + [0.0] * 63), "values must lie in [0, 16]"),
    (request_with(data=None), "has neither data nor binary_data_size"),
    (request_with(name="pixels"), "has no input 'pixels'"),
    (request_with(shape=[65, 64], data=ROW * 65), "exceeds max_batch_size 64"),
    (request_with(parameters={"binary_data_size": 256}), "has both data and binary_data_size"),
    ({"inputs": []}, "inputs: List should have at least 1 item"),
    ({"inputs": "image"}, "inputs: Input should be a valid list"),
    ({}, "inputs: Field required"),
    ({"inputs": [request_with()["inputs"][0]] * 2}, "given more than once"),
    ({**request_with(), "parameters": {"x": [1]}}, "parameters.x"),
]


BAD_OUTPUTS = [
    ("infer", [{"name": "softmax"}], "has no output 'softmax'; outputs: probabilities, logits"),
    ("infer", [{"name": "logits"}] * 2, "requested more than once"),
    ("score", [{"name": "logits"}], "has no output 'logits'; outputs: probabilities, predicted"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_REQUESTS)
@pytest.mark.parametrize("endpoint", ["infer", "score"])
def test_invalid_requests_get_400_naming_the_problem(client, body, fragment, endpoint):
    response = client.post(f"/v2/models/digits/{endpoint}", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(("endpoint", "outputs", "fragment"), BAD_OUTPUTS)
def test_unknown_or_repeated_outputs(client, endpoint, outputs, fragment):
    body = {**request_with(), "outputs": outputs}
    response = client.post(f"/v2/models/digits/{endpoint}", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "not valid JSON"),
        (
            b'{"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": [NaN]}]}',
            "not valid JSON",
        ),
    ],
)
def test_malformed_bodies(client, content, fragment):
    response = client.post("/v2/models/digits/infer", content=content)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("temperature", "fragment"),
    [(0, "> 0"), (-1.5, "> 0"), ("hot", "must be a number"), (True, "must be a number")],
)
def test_bad_temperature(client, images, temperature, fragment):
    request = image_request(images[:1], parameters={"temperature": temperature})
    response = client.post("/v2/models/digits/score", json=request)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def binary_post(client, header: dict[str, Any], blob: bytes, length: str | None = None):
    raw = orjson.dumps(header)
    return client.post(
        "/v2/models/digits/infer",
        content=raw + blob,
        headers={"Inference-Header-Content-Length": length or str(len(raw))},
    )


def binary_header(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "image",
                "shape": shape or [1, 64],
                "datatype": "FP32",
                "parameters": {"binary_data_size": size},
            }
        ]
    }


@pytest.mark.parametrize(
    ("header", "blob", "length", "fragment"),
    [
        (binary_header(256), b"\0" * 100, None, "binary data is truncated"),
        (binary_header(256), b"\0" * 300, None, "44 bytes of binary data belong to no input"),
        (binary_header(252, [1, 63]), b"\0" * 252, None, "must have shape [-1, 64]"),
        (binary_header(200), b"\0" * 200, None, "200 bytes for shape [1, 64] of FP32"),
        (binary_header(256), b"\0" * 256, "99999", "does not fit"),
        (binary_header(256), b"\0" * 256, "abc", "does not fit"),
        (binary_header(-1), b"", None, "binary_data_size must be an integer"),
    ],
)
def test_bad_binary_requests(client, header, blob, length, fragment):
    response = binary_post(client, header, blob, length)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_binary_nan_is_rejected(client):
    blob = np.full((1, 64), np.nan, dtype=np.float32).tobytes()
    response = binary_post(client, binary_header(256), blob)
    assert response.status_code == 400
    assert "NaN or infinite" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/models/nope/infer", 404),
        ("POST", "/v2/models/nope/score", 404),
        ("POST", "/v2/models/digits/versions/9/infer", 404),
        ("GET", "/v2/no/such/route", 404),
        ("GET", "/v2/models/digits/infer", 405),
    ],
)
def test_not_found_and_wrong_method(client, method, path, status):
    response = client.request(method, path, json=request_with())
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_body_over_the_limit_gets_413(client):
    rows = 9000  # 9000 × 64 zeros as JSON is over the default 8 MiB
    body = b'{"inputs":[{"name":"image","shape":[%d,64],"datatype":"FP32","data":[' % rows
    body += b",".join([b"0.000000000000"] * (rows * 64)) + b"]}]}"
    response = client.post("/v2/models/digits/infer", content=body)
    assert response.status_code == 413
    assert "exceeds the 8388608-byte limit" in response.json()["error"]


def test_chunked_body_over_the_limit_gets_413(client):
    def chunks() -> Iterator[bytes]:
        for _ in range(9):
            yield b" " * (1024 * 1024)

    response = client.post("/v2/models/digits/infer", content=chunks())
    assert response.status_code == 413


def test_errors_echo_the_request_id(client):
    response = client.post("/v2/models/nope/infer", json={}, headers={"X-Request-ID": "e-1"})
    assert response.headers["x-request-id"] == "e-1"
