"""Connection hygiene against a real server with short timeouts: slow heads and bodies,
aborted uploads and the bound on buffered upload bytes. Raw sockets play the bad clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.settings import Settings
from tests.service.api.test_metrics import scrape, value

pytestmark = pytest.mark.model

TIMEOUT_S = 0.5
BUDGET = 100_000
PATH = "/v2/models/digits/score"


@pytest.fixture(scope="module")
def strict_server(repository) -> Iterator[str]:
    settings = Settings(
        model_repository=repository,
        header_timeout_s=TIMEOUT_S,
        body_timeout_s=TIMEOUT_S,
        max_buffered_bytes=BUDGET,
    )
    with running_server(settings) as url:
        yield url


@pytest.fixture
def http(strict_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_server, timeout=10) as client:
        yield client


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def head(length: int) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def still_serving(http: httpx.Client, images) -> None:
    assert http.get("/v2/health/live").status_code == 200
    assert http.post(PATH, json=image_request(images[:1])).status_code == 200


@pytest.mark.parametrize("partial", [b"", b"POST /v2/models/digits/score HTTP/1.1\r\nHost: te"])
def test_an_unfinished_request_head_is_closed(strict_server, http, images, partial):
    with connect(strict_server) as sock:
        sock.sendall(partial)
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # closed without an answer
        assert time.monotonic() - started < TIMEOUT_S + 3
    still_serving(http, images)


def test_a_body_shorter_than_its_content_length_is_a_408(strict_server, http, images):
    with connect(strict_server) as sock:
        sock.sendall(head(1000) + b'{"inputs": [')
        started = time.monotonic()
        answer = sock.recv(65536)
        assert time.monotonic() - started < TIMEOUT_S + 3
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 0.5 s" in rest
    assert orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    still_serving(http, images)


def test_an_aborted_upload_is_a_499_not_a_500(strict_server, http, images):
    def count(code: str) -> float:
        return value(scrape(http), "surety_requests_total", endpoint="score", model="digits",
                     code=code)  # fmt: skip

    before_499, before_500 = count("499"), count("500")
    with connect(strict_server) as sock:
        sock.sendall(head(50_000) + b'{"inputs": [' + b" " * 1000)
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while count("499") == before_499 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count("499") == before_499 + 1
    assert count("500") == before_500
    still_serving(http, images)


def test_uploads_past_the_buffer_budget_get_503(strict_server, http, images):
    with connect(strict_server) as holder:
        holder.sendall(head(80_000) + b" " * 10_000)  # holds 80,000 bytes of the budget
        time.sleep(0.1)
        refused = http.post(PATH, content=b" " * 30_000, headers={"Content-Type": "text/plain"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "limit leaves no room" in refused.json()["error"]
    # The holder's bytes return to the budget once its request ends (here: times out).
    time.sleep(TIMEOUT_S + 0.5)
    still_serving(http, images)
    body = orjson.dumps(image_request(images[:30])).ljust(40_000)  # JSON allows the spaces
    assert http.post(PATH, content=body).status_code == 200
