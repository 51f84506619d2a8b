"""POST /infer: JSON tensors (flat and nested), output subsets, the binary extension, and an
unchanged OIP client (tritonclient), all against a direct ORT run of the same model."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http

from surety_kit.payloads import image_request
from tests.service.helpers import run_direct

pytestmark = pytest.mark.model


def decode_binary(response) -> tuple[Any, bytes]:
    length = int(response.headers["inference-header-content-length"])
    return orjson.loads(response.content[:length]), response.content[length:]


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"])
def test_json_infer_matches_direct_run(client, direct, images, path):
    batch = images[:5]
    response = client.post(path, json=image_request(batch, id="r-1"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "1", "r-1")
    expected = run_direct(direct, batch)
    assert [o["name"] for o in body["outputs"]] == list(expected)
    for output in body["outputs"]:
        assert output["datatype"] == "FP32"
        assert output["shape"] == list(expected[output["name"]].shape)
        got = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
        np.testing.assert_allclose(got, expected[output["name"]], rtol=1e-6, atol=1e-6)


def test_nested_data_equals_flat_data(client, images):
    flat = image_request(images[:3])
    nested = image_request(images[:3])
    nested["inputs"][0]["data"] = images[:3].tolist()
    assert client.post("/v2/models/digits/infer", json=nested).json() == (
        client.post("/v2/models/digits/infer", json=flat).json()
    )


def test_integer_json_values_feed_fp32(client, images):
    request = image_request(images[:1])
    request["inputs"][0]["data"] = [int(v) for v in images[0]]
    assert client.post("/v2/models/digits/infer", json=request).status_code == 200


def test_requested_outputs_subset_in_request_order(client, images):
    request = image_request(images[:2], outputs=[{"name": "block2_features"}, {"name": "logits"}])
    body = client.post("/v2/models/digits/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["block2_features", "logits"]
    assert body["outputs"][0]["shape"] == [2, 64]


def test_binary_extension_round_trip(client, direct, images):
    batch = np.ascontiguousarray(images[:4])
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [4, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "logits"},
            ],
        }
    )
    response = client.post(
        "/v2/models/digits/infer",
        content=header + batch.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    body, blob = decode_binary(response)
    probabilities, logits = body["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 4 * 10 * 4 == len(blob)
    assert "data" not in probabilities
    expected = run_direct(direct, batch)
    np.testing.assert_array_equal(
        np.frombuffer(blob, dtype="<f4").reshape(4, 10), expected["probabilities"]
    )
    np.testing.assert_allclose(np.array(logits["data"]).reshape(4, 10), expected["logits"], 1e-6)


def test_binary_data_output_parameter_makes_every_output_binary(client, images):
    request = image_request(images[:1], parameters={"binary_data_output": True})
    body, blob = decode_binary(client.post("/v2/models/digits/infer", json=request))
    sizes = [o["parameters"]["binary_data_size"] for o in body["outputs"]]
    assert sizes == [40, 40, 128, 256, 512]
    assert len(blob) == sum(sizes)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_unchanged(triton, direct, images, binary):
    batch = np.ascontiguousarray(images[:8])
    image = triton_http.InferInput("image", list(batch.shape), "FP32")
    image.set_data_from_numpy(batch, binary_data=binary)
    outputs = [
        triton_http.InferRequestedOutput("probabilities", binary_data=binary),
        triton_http.InferRequestedOutput("block3_features", binary_data=binary),
    ]
    result = triton.infer("digits", [image], outputs=outputs, request_id="t-1")
    expected = run_direct(direct, batch)
    assert result.get_response()["id"] == "t-1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], 1e-6)
    np.testing.assert_allclose(
        result.as_numpy("block3_features"), expected["block3_features"], 1e-6
    )
    assert result.as_numpy("logits") is None


def test_tritonclient_all_outputs_with_version(triton, direct, images):
    batch = np.ascontiguousarray(images[:2])
    image = triton_http.InferInput("image", list(batch.shape), "FP32")
    image.set_data_from_numpy(batch)
    result = triton.infer("digits", [image], model_version="1")
    np.testing.assert_allclose(result.as_numpy("logits"), run_direct(direct, batch)["logits"], 1e-6)
