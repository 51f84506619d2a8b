"""Early shedding in the middleware: the paths it judges are exactly the inference routes', and
what it refuses is answered and counted like any refusal."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from fastapi.routing import APIRoute

from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.api import routers
from surety_serving.api.fast import inference_path
from surety_serving.settings import Settings
from tests.service.api.test_metrics import scrape, value

pytestmark = pytest.mark.model

INFERENCE_ROUTES = {"infer", "score", "uncertainty", "judge"}


def test_the_inference_path_matches_the_inference_routes_and_nothing_else():
    routes = [route for router, _ in routers() for route in router.routes]
    inference = [r for r in routes if isinstance(r, APIRoute) and r.name in INFERENCE_ROUTES]
    assert len(inference) == 8  # with and without /versions/{version}
    for route in routes:
        path = getattr(route, "path", "").replace("{model}", "digits").replace("{version}", "7")
        methods: set[str] = getattr(route, "methods", set())
        judged = "POST" in methods and inference_path().fullmatch(path) is not None
        assert judged == (route in inference), route


@pytest.mark.parametrize("path", ["score", "versions/1/infer", "uncertainty"])
def test_a_shed_request_is_answered_and_counted_like_any_refusal(client, images, path):
    endpoint = path.rsplit("/", 1)[-1]
    before = scrape(client)
    response = client.post(
        f"/v2/models/digits/{path}",
        json=image_request(images[:1]),
        headers={"Request-Timeout": "1e-9", "X-Request-ID": "shed-1"},
    )
    assert response.status_code == 504
    assert set(response.json()) == {"error"}
    assert response.headers["x-request-id"] == "shed-1"
    after = scrape(client)
    labels = {"endpoint": endpoint, "model": "digits", "code": "504"}
    assert value(after, "surety_requests_total", **labels) == (
        value(before, "surety_requests_total", **labels) + 1
    )
    reason = {"model": "digits", "reason": "deadline"}
    assert value(after, "surety_rejected_requests_total", **reason) == (
        value(before, "surety_rejected_requests_total", **reason) + 1
    )


def test_unknown_models_are_left_to_the_route(client, images):
    response = client.post(
        "/v2/models/nope/score", json=image_request(images[:1]), headers={"Request-Timeout": "1e-9"}
    )
    assert response.status_code == 404


def test_with_pacing_an_early_retry_is_refused_only_after_retry_after(repository, images):
    body = image_request(images[:1])
    expired = {"Request-Timeout": "1e-9"}
    settings = Settings(model_repository=repository, pace_early_retries=True)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
        url_path = "/v2/models/digits/score"
        assert http.post(url_path, json=body, headers=expired).status_code == 504
        started = time.monotonic()
        assert http.post(url_path, json=body, headers=expired).status_code == 504
        held = time.monotonic() - started
        assert http.post(url_path, json=body).status_code == 200  # admitted: never held
        assert http.get("/v2/health/live").status_code == 200
    assert held >= 0.8  # Retry-After is 1 s; the pacer tolerates 10% early


def test_without_pacing_refusals_are_never_held(client, images):
    body = image_request(images[:1])
    started = time.monotonic()
    for _ in range(3):
        response = client.post(
            "/v2/models/digits/score", json=body, headers={"Request-Timeout": "1e-9"}
        )
        assert response.status_code == 504
    assert time.monotonic() - started < 0.8


def test_a_refusal_is_decided_before_the_body_is_read(server, client):
    """The refusal is written while the body it announces has not been sent: a server that read
    the body first would wait for it (and answer 408 after body_timeout_s, 30 s) instead. This
    holds however busy the machine is; how fast refusals are next to answers is bench/overload.py's
    to measure."""
    host, port = server.removeprefix("http://").split(":")
    head = (
        "POST /v2/models/digits/score HTTP/1.1\r\n"
        f"Host: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
        "Request-Timeout: 1e-9\r\n\r\n"
    )
    reason = {"model": "digits", "reason": "deadline"}
    before = value(scrape(client), "surety_rejected_requests_total", **reason)
    with socket.create_connection((host, int(port)), timeout=25) as sock:
        sock.sendall(head.encode())  # and never a byte of the body
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
    status_line, *headers = answer.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert status_line.split()[1] == "504", answer
    assert any(h.lower().startswith("x-request-id:") for h in headers), headers
    after = value(scrape(client), "surety_rejected_requests_total", **reason)
    assert after == before + 1
