"""Deadlines over HTTP: request parameter timeout_ms and the Request-Timeout header."""

from __future__ import annotations

import pytest

from surety_kit.payloads import image_request
from tests.service.api.test_metrics import scrape, value

pytestmark = pytest.mark.model


@pytest.mark.parametrize("endpoint", ["infer", "score", "uncertainty"])
def test_a_deadline_that_passes_is_a_504(client, images, endpoint):
    # 1 µs: the deadline passes while the request is still being decoded.
    body = image_request(images[:2], parameters={"timeout_ms": 0.001})
    response = client.post(f"/v2/models/digits/{endpoint}", json=body)
    assert response.status_code == 504, response.text
    assert "deadline passed" in response.json()["error"]
    assert set(response.json()) == {"error"}


def test_the_earlier_of_header_and_parameter_is_the_deadline(client, images):
    url = "/v2/models/digits/score"
    expired = client.post(url, json=image_request(images[:1]), headers={"Request-Timeout": "1e-6"})
    assert expired.status_code == 504
    generous = image_request(images[:1], parameters={"timeout_ms": 5000})
    assert client.post(url, json=generous, headers={"Request-Timeout": "1e-6"}).status_code == 504
    short = image_request(images[:1], parameters={"timeout_ms": 0.001})
    assert client.post(url, json=short, headers={"Request-Timeout": "5"}).status_code == 504
    relaxed = client.post(url, json=generous, headers={"Request-Timeout": "2.5"})
    assert relaxed.status_code == 200, relaxed.text


@pytest.mark.parametrize("header", ["soon", "0", "-1", "nan", "inf", ""])
def test_a_bad_request_timeout_header_is_a_400(client, images, header):
    response = client.post(
        "/v2/models/digits/score",
        json=image_request(images[:1]),
        headers={"Request-Timeout": header},
    )
    assert response.status_code == 400
    assert "Request-Timeout" in response.json()["error"]


@pytest.mark.parametrize("timeout", ["5", 0, -3, True])
def test_a_bad_timeout_ms_is_a_400(client, images, timeout):
    body = image_request(images[:1], parameters={"timeout_ms": timeout})
    response = client.post("/v2/models/digits/score", json=body)
    assert response.status_code == 400
    assert "timeout_ms" in response.json()["error"]


def test_deadline_rejections_are_counted(client, images):
    labels = {"model": "digits", "reason": "deadline"}
    before = value(scrape(client), "surety_rejected_requests_total", **labels)
    body = image_request(images[:1], parameters={"timeout_ms": 0.001})
    assert client.post("/v2/models/digits/score", json=body).status_code == 504
    assert value(scrape(client), "surety_rejected_requests_total", **labels) == before + 1


def test_latency_buckets_reach_past_the_longest_deadline(client):
    buckets = {
        float(dict(labels)["le"])
        for (name, labels) in scrape(client)
        if name == "surety_request_duration_seconds_bucket"
    }
    assert max(buckets - {float("inf")}) > 60.0  # max_timeout_ms defaults to 60 s
