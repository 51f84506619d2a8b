"""The inference fast path (surety_serving.api.fast) answers as the FastAPI routes do: the same
requests
sent to a server with it and to one without it (every request routed) get the same status,
body, headers and metrics, for answers and for every kind of refusal, keys on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

import surety_serving.main
from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.settings import Settings
from tests.service.api.test_metrics import scrape, value

pytestmark = pytest.mark.model

KEY = "k-fast-3e1"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: Headers that must agree; Date and X-Request-ID (generated) differ by nature.
COMPARED_HEADERS = (
    "content-type",
    "content-length",
    "retry-after",
    "www-authenticate",
    "inference-header-content-length",
)


@pytest.fixture(scope="module")
def servers(repository: Path) -> Iterator[dict[str, httpx.Client]]:
    """``fast``: as served; ``routed``: the same app with the fast path left out."""
    settings = Settings(model_repository=repository, api_keys=(SecretStr(KEY),))
    with running_server(settings) as fast_url, pytest.MonkeyPatch.context() as patch:
        patch.setattr(surety_serving.main, "InferenceFastPath", lambda keyring: None)
        with running_server(settings) as routed_url:
            patch.undo()
            with (
                httpx.Client(base_url=fast_url, timeout=30) as fast,
                httpx.Client(base_url=routed_url, timeout=30) as routed,
            ):
                yield {"fast": fast, "routed": routed}


def binary_request(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    batch = images.astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + batch.tobytes(), headers


def cases(images: np.ndarray) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, httpx request arguments) of answers and refusals alike."""
    two = image_request(images[:2])
    body, binary_headers = binary_request(images[:3])
    return [
        ("infer", "/v2/models/digits/infer", {"json": two, "headers": AUTH}),
        ("version", "/v2/models/digits/versions/1/infer", {"json": two, "headers": AUTH}),
        ("score", "/v2/models/digits/score", {"json": two, "headers": AUTH}),
        ("uncertainty", "/v2/models/digits/versions/1/uncertainty", {"json": two, "headers": AUTH}),
        ("outputs", "/v2/models/digits/infer",
         {"json": image_request(images[:1], outputs=[{"name": "logits"}]), "headers": AUTH}),
        ("binary", "/v2/models/digits/infer",
         {"content": body, "headers": {**binary_headers, **AUTH}}),
        ("x-api-key", "/v2/models/digits/score", {"json": two, "headers": {"X-API-Key": KEY}}),
        ("basic falls through to x-api-key", "/v2/models/digits/score",
         {"json": two, "headers": {"Authorization": "Basic Zm9vOmJhcg==", "X-API-Key": KEY}}),
        ("no key", "/v2/models/digits/infer", {"json": two}),
        ("wrong key", "/v2/models/digits/infer",
         {"json": two, "headers": {"Authorization": "Bearer nope"}}),
        ("other scheme only", "/v2/models/digits/infer",
         {"json": two, "headers": {"Authorization": "Basic Zm9vOmJhcg=="}}),
        ("unknown model", "/v2/models/nope/infer", {"json": two, "headers": AUTH}),
        ("unknown version", "/v2/models/digits/versions/9/score", {"json": two, "headers": AUTH}),
        ("not json", "/v2/models/digits/infer", {"content": b"{nope", "headers": AUTH}),
        ("empty body", "/v2/models/digits/infer", {"content": b"", "headers": AUTH}),
        ("unknown input", "/v2/models/digits/infer",
         {"json": {"inputs": [{**two["inputs"][0], "name": "x"}]}, "headers": AUTH}),
        ("bad timeout header", "/v2/models/digits/infer",
         {"json": two, "headers": {**AUTH, "Request-Timeout": "soon"}}),
        ("bad timeout parameter", "/v2/models/digits/infer",
         {"json": image_request(images[:1], parameters={"timeout_ms": -1}), "headers": AUTH}),
        ("deadline", "/v2/models/digits/infer",
         {"json": two, "headers": {**AUTH, "Request-Timeout": "1e-9"}}),
        ("bad temperature", "/v2/models/digits/score",
         {"json": image_request(images[:1], parameters={"temperature": 0}), "headers": AUTH}),
        ("too large", "/v2/models/digits/infer",
         {"content": b" " * (70 * 1024 * 1024), "headers": AUTH}),
    ]  # fmt: skip


def test_fast_and_routed_answers_agree(servers, images):
    for name, path, arguments in cases(images):
        answers = {way: http.post(path, **arguments) for way, http in servers.items()}
        fast, routed = answers["fast"], answers["routed"]
        assert fast.status_code == routed.status_code, name
        assert fast.content == routed.content, name
        for header in COMPARED_HEADERS:
            assert fast.headers.get(header) == routed.headers.get(header), (name, header)
        assert "x-request-id" in fast.headers, name


def test_the_fast_path_serves_and_counts_like_the_routes(servers, images):
    """Both servers see one answer and three refusals on score; the counters move alike. On the
    routed server the route table matched the request, which the fast path's labels mirror."""
    before = {way: scrape(http) for way, http in servers.items()}
    for http in servers.values():
        http.post("/v2/models/digits/score", json=image_request(images[:1]), headers=AUTH)
        http.post("/v2/models/digits/score", json=image_request(images[:1]))
        http.post("/v2/models/nope/score", json=image_request(images[:1]), headers=AUTH)
        http.post(
            "/v2/models/digits/score",
            json=image_request(images[:1]),
            headers={**AUTH, "Request-Timeout": "1e-9"},
        )
    labels = [
        {"endpoint": "score", "model": "digits", "code": "200"},
        {"endpoint": "score", "model": "digits", "code": "401"},
        {"endpoint": "score", "model": "_unknown", "code": "404"},
        {"endpoint": "score", "model": "digits", "code": "504"},
    ]
    for way, http in servers.items():
        after = scrape(http)
        for label in labels:
            moved = value(after, "surety_requests_total", **label) - value(
                before[way], "surety_requests_total", **label
            )
            assert moved == 1, (way, label)
