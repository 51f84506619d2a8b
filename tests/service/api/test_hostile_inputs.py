"""Hostile requests over HTTP, against the real servers: each is refused at once with a 400
naming the input and the problem (or, for very long texts, served within the cost of the
tokens kept), and the server answers normally afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from surety_serving.settings import Settings
from tests.service import textmodel
from tests.service.textmodel import text_request

pytestmark = pytest.mark.model

DIGITS = "/v2/models/digits/infer"
TEXT = f"/v2/models/{textmodel.NAME}/score"
DEFAULTS = Settings()
#: A dimension that numpy cannot lay out, even beside a zero ("array is too big").
HUGE = 2**62
SENTENCE = "The compiler rejected the program again. "


def image(shape: list[int], data: list[float] | None = None) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": data}]}


def refused(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    for fragment in fragments:
        assert fragment in response.json()["error"]


def assert_still_serving(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.post(path, json=body).status_code == 200


def assert_digits_served(client: httpx.Client) -> None:
    assert_still_serving(client, DIGITS, image([1, 64], [0.0] * 64))


def vm_rss_mib() -> float:
    """This process's resident memory: the servers of these tests run in it, in a thread."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("shape", [[0, HUGE], [HUGE, 0]])
@pytest.mark.parametrize("binary", [False, True])
def test_empty_tensors_with_absurd_dimensions(client, shape, binary):
    if binary:
        body = image(shape)
        body["inputs"][0]["parameters"] = {"binary_data_size": 0}
        header = orjson.dumps(body)
        response = client.post(
            DIGITS, content=header, headers={"Inference-Header-Content-Length": str(len(header))}
        )
    else:
        response = client.post(DIGITS, json=image(shape, []))
    refused(
        response,
        f"input 'image': shape {shape} spans {HUGE} elements",
        f"over the {DEFAULTS.max_request_elements}-element limit",
    )
    assert_digits_served(client)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (image([65_537, 64], []), "shape [65537, 64] spans 4194368 elements, over the 4194304"),
        (image([1] * 33, [0.0]), "shape has 33 dimensions, over the limit of 32"),
        (image([-1, 64], []), "has a negative dimension"),
    ],
    ids=["elements", "dimensions", "negative"],
)
def test_shapes_beyond_the_limits(client, body, fragment):
    refused(client.post(DIGITS, json=body), "input 'image'", fragment)
    assert_digits_served(client)


@pytest.mark.parametrize("key", ["inputs", "outputs"])
def test_thousands_of_entries_are_refused_at_once(client, key):
    count = 8000
    body: dict[str, Any] = image([1, 64], [0.0] * 64)
    if key == "inputs":
        body["inputs"] = [image([1], [0.0])["inputs"][0] | {"name": f"x{i}"} for i in range(count)]
    else:
        body["outputs"] = [{"name": f"y{i}"} for i in range(count)]
    content = orjson.dumps(body)
    started = time.perf_counter()
    response = client.post(DIGITS, content=content)
    elapsed = time.perf_counter() - started
    refused(response, f"the request lists {count} {key}, over the limit of 64")
    # Before the limit, 8000 inputs held the server for seconds (a quadratic name check).
    assert elapsed < 1.0
    assert_digits_served(client)


@pytest.mark.parametrize(
    ("value", "what"),
    [(1, "a number"), (2.5, "a number"), (True, "true/false"), (None, "null"), (["x"], "a list")],
)
def test_text_elements_must_be_strings(text_client, value, what):
    response = text_client.post(TEXT, json=text_request(["hello", value]))
    refused(response, f"input 'text': BYTES data must be strings; element 1 is {what}")
    assert_still_serving(text_client, TEXT, text_request(["hello"]))


def test_a_flood_of_empty_binary_elements(text_client):
    # One element for a shape of one, then a million empty ones (4 bytes each).
    blob = (5).to_bytes(4, "little") + b"hello" + b"\0" * (4 << 20)
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES"}
    header = orjson.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": len(blob)}}]})
    response = text_client.post(
        TEXT,
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    refused(response, "input 'text': binary data holds more than the 1 BYTES elements")
    assert_still_serving(text_client, TEXT, text_request(["hello"]))


def test_long_texts_cost_what_the_kept_tokens_cost(text_client):
    """32 rows of 250,000 characters answer as 32 rows just past max_length do (the same first
    tokens), in about their time and without the memory of tokenizing everything."""
    rows = 32
    past_max_length = orjson.dumps(text_request([SENTENCE * 12] * rows))
    huge = orjson.dumps(text_request([(SENTENCE * 7000)[:250_000]] * rows))
    assert len(huge) < DEFAULTS.max_request_bytes
    text_client.post(TEXT, content=past_max_length)  # sizes the model's buffers for 32 rows

    # CPU time of this process (the server runs in one of its threads), not wall time: other
    # work on the machine stretches the wall clock of both requests unevenly.
    started = time.process_time()
    normal = text_client.post(TEXT, content=past_max_length)
    normal_s = time.process_time() - started
    rss = vm_rss_mib()
    started = time.process_time()
    response = text_client.post(TEXT, content=huge)
    huge_s = time.process_time() - started
    growth = vm_rss_mib() - rss

    assert response.status_code == 200, response.text
    truncated = {"truncated": rows, "truncated_rows": ",".join(map(str, range(rows)))}
    assert (
        response.json()["parameters"]
        == normal.json()["parameters"]
        == {
            "temperature": 1.0,
            **truncated,
        }
    )
    np.testing.assert_allclose(
        response.json()["outputs"][0]["data"], normal.json()["outputs"][0]["data"], atol=1e-6
    )
    # Tokenizing whole texts cost several times the normal request, and over 300 MiB.
    assert huge_s < 3 * normal_s + 0.5, (huge_s, normal_s)
    assert growth < 100, growth
    assert_still_serving(text_client, TEXT, text_request(["hello"]))
