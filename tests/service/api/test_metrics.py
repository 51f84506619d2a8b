"""GET /metrics: the names docs/api.md lists, moving after requests, with bounded labels."""

from __future__ import annotations

import http.client

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from surety_kit.payloads import image_request

pytestmark = pytest.mark.model


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_after_requests(client, images):
    before = scrape(client)
    for _ in range(3):
        assert client.post("/v2/models/digits/infer", json=image_request(images[:2])).is_success
    assert client.post("/v2/models/digits/score", json=image_request(images[:1])).is_success
    assert client.post("/v2/models/digits/infer", json={}).status_code == 400
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("surety_requests_total", endpoint="infer", model="digits", code="200") == 3
    assert delta("surety_requests_total", endpoint="score", model="digits", code="200") == 1
    assert delta("surety_requests_total", endpoint="infer", model="digits", code="400") == 1
    assert delta("surety_request_duration_seconds_count", endpoint="infer", model="digits") == 4
    assert delta("surety_queue_duration_seconds_count", model="digits") == 4
    assert delta("surety_inference_duration_seconds_count", model="digits") >= 1
    assert delta("surety_batch_size_sum", model="digits") == 7
    assert value(after, "surety_inflight_requests", model="digits") == 0
    assert value(after, "surety_model_ready", model="digits", version="1") == 1


def test_histogram_buckets_start_at_half_a_millisecond(client):
    assert client.get("/v2/health/live").status_code == 200
    text = client.get("/metrics").text
    assert 'surety_request_duration_seconds_bucket{endpoint="live",le="0.0005",model=""}' in text


def test_unknown_models_share_one_label(client):
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    for name in ("a1", "b2", "c3"):
        assert client.post(f"/v2/models/{name}/infer", json=body).status_code == 404
    samples = scrape(client)
    models = {dict(labels).get("model") for (name, labels) in samples if "requests" in name}
    assert not {"a1", "b2", "c3"} & models
    assert value(samples, "surety_requests_total", endpoint="infer", model="_unknown", code="404")


def test_rejections_are_counted(client, server):
    labels = {"model": "digits", "reason": "too_large"}
    before = value(scrape(client), "surety_rejected_requests_total", **labels)
    # A declared length over the limit is refused before any of the body is read.
    connection = http.client.HTTPConnection(server.removeprefix("http://"), timeout=10)
    connection.putrequest("POST", "/v2/models/digits/infer")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert orjson.loads(response.read())["error"].startswith("request body of 1000000000 bytes")
    connection.close()
    assert value(scrape(client), "surety_rejected_requests_total", **labels) == before + 1
