"""POST /score: probabilities, predicted index and label; temperature through the fused op."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from surety_kit.payloads import image_request
from tests.service.helpers import run_direct

pytestmark = pytest.mark.model


def outputs(body: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o for o in body["outputs"]}


def test_score_outputs_and_accuracy(client, images, labels):
    response = client.post("/v2/models/digits/score", json=image_request(images[:64]))
    assert response.status_code == 200
    body = response.json()
    assert body["parameters"] == {"temperature": 1.0}
    out = outputs(body)
    assert list(out) == ["probabilities", "predicted_index", "predicted_label"]
    assert (out["probabilities"]["datatype"], out["probabilities"]["shape"]) == ("FP32", [64, 10])
    assert (out["predicted_index"]["datatype"], out["predicted_index"]["shape"]) == ("INT64", [64])
    assert (out["predicted_label"]["datatype"], out["predicted_label"]["shape"]) == ("BYTES", [64])
    probabilities = np.array(out["probabilities"]["data"]).reshape(64, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    index = np.array(out["predicted_index"]["data"])
    assert (index == probabilities.argmax(axis=1)).all()
    assert out["predicted_label"]["data"] == [str(i) for i in index]
    assert (index == labels[:64]).mean() >= 0.95


@pytest.mark.parametrize("temperature", [0.5, 2, 10.0])
def test_temperature_scales_the_logits(client, direct, images, temperature):
    batch = images[:6]
    request = image_request(batch, parameters={"temperature": temperature})
    body = client.post("/v2/models/digits/score", json=request).json()
    assert body["parameters"] == {"temperature": float(temperature)}
    got = np.array(outputs(body)["probabilities"]["data"]).reshape(6, 10)
    logits = run_direct(direct, batch)["logits"].astype(np.float64) / temperature
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_score_output_subset_and_version(client, images):
    request = image_request(images[:2], outputs=[{"name": "predicted_label"}], id="s")
    body = client.post("/v2/models/digits/versions/1/score", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["predicted_label"]
    assert (body["id"], body["model_version"]) == ("s", "1")


def test_score_binary_outputs(client, images):
    request = image_request(images[:3], parameters={"binary_data_output": True})
    response = client.post("/v2/models/digits/score", json=request)
    length = int(response.headers["inference-header-content-length"])
    blob = response.content[length:]
    # probabilities (3×10 FP32) + predicted_index (3 INT64) + three 1-char labels (4+1 bytes each)
    assert len(blob) == 120 + 24 + 15
