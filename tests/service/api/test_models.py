"""Model metadata and readiness, with and without /versions/{v}."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.model

EXPECTED_OUTPUTS = {
    "probabilities": [-1, 10],
    "logits": [-1, 10],
    "block1_features": [-1, 32],
    "block2_features": [-1, 64],
    "block3_features": [-1, 128],
}


@pytest.mark.parametrize("path", ["/v2/models/digits", "/v2/models/digits/versions/1"])
def test_model_metadata(client, path):
    body = client.get(path).json()
    assert body["name"] == "digits"
    assert body["versions"] == ["1"]
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["shape"] for o in body["outputs"]} == EXPECTED_OUTPUTS
    assert {o["datatype"] for o in body["outputs"]} == {"FP32"}


@pytest.mark.parametrize("path", ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"])
def test_model_ready(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"name": "digits", "ready": True}


def test_tritonclient_reads_metadata_and_readiness(triton):
    assert triton.is_model_ready("digits")
    assert triton.is_model_ready("digits", "1")
    assert not triton.is_model_ready("digits", "2")
    assert not triton.is_model_ready("nope")
    metadata = triton.get_model_metadata("digits", "1")
    assert metadata["inputs"][0]["name"] == "image"


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/v2/models/nope", 404, "model 'nope' is not in the repository"),
        ("/v2/models/nope/ready", 404, "model 'nope'"),
        ("/v2/models/digits/versions/2", 404, "has no version 2"),
        ("/v2/models/digits/versions/2/ready", 404, "has no version 2"),
        ("/v2/models/digits/versions/one", 400, "path.version"),
    ],
)
def test_unknown_model_or_version(client, path, status, fragment):
    response = client.get(path)
    assert response.status_code == status
    assert fragment in response.json()["error"]
