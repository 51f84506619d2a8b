"""Server metadata, liveness and readiness, over HTTP and through tritonclient."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.model


def test_server_metadata_lists_extensions(client, triton):
    body = client.get("/v2").json()
    assert body["name"] == "surety"
    assert {"binary_tensor_data", "score"} <= set(body["extensions"])
    assert triton.get_server_metadata()["name"] == "surety"


def test_live_and_ready(client, triton):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert triton.is_server_live()
    assert triton.is_server_ready()


def test_request_id_is_echoed_or_assigned(client):
    assert (
        client.get("/v2/health/live", headers={"X-Request-ID": "req-7"}).headers["x-request-id"]
        == "req-7"
    )
    assert len(client.get("/v2/health/live").headers["x-request-id"]) == 32


def test_openapi_document_lists_the_v2_paths(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v2/models/{model}/infer" in paths
    assert "/v2/models/{model}/versions/{version}/score" in paths
