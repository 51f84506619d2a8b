"""Optional API keys over HTTP: Bearer or X-API-Key, open probes, /metrics per its setting, a
keys file of digests; and the settings that configure them."""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.http as triton_http
from pydantic import SecretStr

from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.api.security import KeyRing, load_keyring, read_digests
from surety_serving.main import create_app
from surety_serving.settings import Settings
from tests.service.api.test_metrics import scrape, value

pytestmark = pytest.mark.model

KEYS = ("k-alpha-7f3e", "k-beta-19ac")
FILE_KEY = "k-from-file-5d21"
PROTECTED = [
    ("get", "/v2"),
    ("get", "/v2/models/digits"),
    ("get", "/v2/models/digits/versions/1/ready"),
    ("post", "/v2/models/digits/infer"),
    ("post", "/v2/models/digits/score"),
    ("post", "/v2/models/digits/versions/1/uncertainty"),
]


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keyed(repository: Path) -> Iterator[httpx.Client]:
    """Keys from SURETY_API_KEYS; /metrics open (the default)."""
    settings = Settings(model_repository=repository, api_keys=tuple(map(SecretStr, KEYS)))
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# ops team, rotated 2026-11\n\n{sha256_hex(FILE_KEY)}  # grafana\n")
    return path


@pytest.fixture(scope="module")
def file_keyed(repository: Path, keys_file: Path) -> Iterator[httpx.Client]:
    """Digests from SURETY_API_KEYS_FILE; /metrics behind a key too."""
    settings = Settings(
        model_repository=repository, api_keys_file=keys_file, metrics_require_key=True
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def call(http: httpx.Client, method: str, path: str, images, **headers: str) -> httpx.Response:
    if method == "post":
        return http.post(path, json=image_request(images[:2]), headers=headers)
    return http.get(path, headers=headers)


def assert_unauthorized(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_no_key_is_a_401(keyed, images, method, path):
    assert_unauthorized(call(keyed, method, path, images), "missing API key")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_bearer_and_x_api_key_both_work(keyed, images, method, path):
    for headers in ({"authorization": f"Bearer {KEYS[0]}"}, {"x-api-key": KEYS[1]}):
        response = call(keyed, method, path, images, **headers)
        assert response.status_code == 200, response.text


def test_a_wrong_key_is_a_401_that_never_echoes_it(keyed, images):
    guess = KEYS[0] + "x"
    for headers in ({"authorization": f"Bearer {guess}"}, {"x-api-key": guess}):
        response = call(keyed, "post", "/v2/models/digits/infer", images, **headers)
        assert_unauthorized(response, "not accepted")
        assert guess not in response.text
        assert all(guess not in value for value in response.headers.values())


def test_another_authorization_scheme_is_named_or_left_to_x_api_key(keyed, images):
    response = call(keyed, "get", "/v2", images, authorization=f"Basic {KEYS[0]}")
    assert_unauthorized(response, "must be 'Bearer <key>'")
    assert KEYS[0] not in response.text
    # A proxy in front may pass its own Authorization on (nginx's basic auth does).
    headers = {"authorization": "Basic dXNlcjpwYXNz", "x-api-key": KEYS[0]}
    assert call(keyed, "get", "/v2", images, **headers).status_code == 200
    # A Bearer key is the one checked when both are sent.
    headers = {"authorization": "Bearer nope", "x-api-key": KEYS[0]}
    assert_unauthorized(call(keyed, "get", "/v2", images, **headers), "not accepted")


def test_the_key_is_checked_before_the_body_is_read(keyed):
    # A terabyte is announced and nothing sent: only a check that reads no body can answer.
    head = (
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: surety\r\n"
        f"Content-Type: application/json\r\nContent-Length: {1 << 40}\r\n\r\n"
    )
    with socket.create_connection((keyed.base_url.host, keyed.base_url.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 401")
    assert "www-authenticate: bearer" in answer.lower()
    assert "missing API key" in answer


def test_probes_openapi_and_docs_need_no_key(keyed):
    for path in ("/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_metrics_open_by_default_and_401s_are_counted_quietly(keyed, images, caplog):
    before = scrape(keyed)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            assert call(keyed, "post", "/v2/models/digits/infer", images).status_code == 401
    after = scrape(keyed)
    labels = {"endpoint": "infer", "model": "digits", "code": "401"}
    assert value(after, "surety_requests_total", **labels) - value(
        before, "surety_requests_total", **labels
    ) == pytest.approx(2)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


def test_the_document_shows_the_schemes_and_401s(keyed):
    document = keyed.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <key>`",
    }
    assert schemes["api_key"]["name"] == "X-API-Key"
    for path, methods in document["paths"].items():
        for operation in methods.values():
            protected = not path.startswith("/v2/health") and path != "/metrics"
            assert ("401" in operation["responses"]) == protected, path
            assert ("security" in operation) == protected, path
            if protected:
                assert operation["security"] == [{"bearer": []}, {"api_key": []}]
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


def test_tritonclient_sends_the_key_as_a_header(keyed, images):
    client = triton_http.InferenceServerClient(url=str(keyed.base_url).removeprefix("http://"))
    try:
        assert client.is_server_live()
        metadata = client.get_model_metadata("digits", headers={"X-API-Key": KEYS[0]})
        assert metadata["name"] == "digits"
    finally:
        client.close()


def test_a_keys_file_of_digests(file_keyed, images):
    for headers in ({"authorization": f"Bearer {FILE_KEY}"}, {"x-api-key": FILE_KEY}):
        response = call(file_keyed, "post", "/v2/models/digits/score", images, **headers)
        assert response.status_code == 200
    # The file holds digests: the digest itself is not a key.
    response = call(file_keyed, "get", "/v2", images, **{"x-api-key": sha256_hex(FILE_KEY)})
    assert_unauthorized(response, "not accepted")
    assert file_keyed.get("/v2/health/live").status_code == 200


def test_metrics_behind_a_key_when_asked(file_keyed):
    assert_unauthorized(file_keyed.get("/metrics"), "missing API key")
    response = file_keyed.get("/metrics", headers={"authorization": f"Bearer {FILE_KEY}"})
    assert response.status_code == 200
    assert "surety_requests_total" in response.text


# -- settings and the key ring --------------------------------------------------------------


def test_api_keys_from_the_environment_are_comma_separated(monkeypatch):
    monkeypatch.setenv("SURETY_API_KEYS", " k1 ,k2,, k3 ")
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == ["k1", "k2", "k3"]
    assert "k1" not in repr(settings)


def test_no_keys_by_default(monkeypatch):
    monkeypatch.delenv("SURETY_API_KEYS", raising=False)
    monkeypatch.setenv("SURETY_API_KEYS_FILE", "")
    settings = Settings()
    assert settings.api_keys == ()
    assert settings.api_keys_file is None
    assert settings.metrics_require_key is False
    assert load_keyring(settings) is None


def test_the_ring_holds_digests_of_both_sources(keys_file):
    ring = load_keyring(Settings(api_keys=(SecretStr("k1"),), api_keys_file=keys_file))
    assert isinstance(ring, KeyRing)
    assert ring.digests == (hashlib.sha256(b"k1").digest(), bytes.fromhex(sha256_hex(FILE_KEY)))
    assert ring.accepts("k1")
    assert ring.accepts(FILE_KEY)
    assert not ring.accepts("k2")
    assert not ring.accepts("")


def test_a_bad_keys_file_fails_at_startup_without_showing_the_line(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{sha256_hex('ok')}\nplain-secret-key\n")
    with pytest.raises(ValueError, match=r"keys:2: not a SHA-256 hex digest") as raised:
        read_digests(path)
    assert "plain-secret-key" not in str(raised.value)
    path.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="holds no key digests"):
        create_app(Settings(api_keys_file=path))
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        create_app(Settings(api_keys_file=tmp_path / "missing"))
