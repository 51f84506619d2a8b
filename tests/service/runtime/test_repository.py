"""A broken model folder beside a good one: the good one serves, readiness tells the truth, and
the log names the file and the field."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest

from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.errors import ConfigError
from surety_serving.runtime.repository import load_repository
from surety_serving.settings import Settings

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def mixed_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed_repository")
    shutil.copytree(repository / "digits", root / "digits")
    # A second version that cannot load, beside the good version 1.
    (root / "digits" / "3").mkdir()
    (root / "digits" / "3" / "model.onnx").write_bytes(b"not an onnx model")
    # A config with an invalid field.
    shutil.copytree(repository / "digits", root / "broken")
    config = (root / "broken" / "config.yaml").read_text()
    (root / "broken" / "config.yaml").write_text(
        config.replace("max_batch_size: 64", "max_batch_size: 0")
    )
    # A valid config that does not describe the graph: an output's datatype differs.
    shutil.copytree(repository / "digits", root / "mismatch")
    config = (root / "mismatch" / "config.yaml").read_text()
    (root / "mismatch" / "config.yaml").write_text(
        config.replace(
            "- name: block1_features\n  datatype: FP32", "- name: block1_features\n  datatype: FP64"
        )
    )
    return root


@pytest.fixture(scope="module")
def mixed_server(mixed_repository: Path):
    with running_server(Settings(model_repository=mixed_repository)) as url:
        yield url


def test_broken_config_is_logged_with_file_and_field(mixed_repository, caplog):
    with caplog.at_level(logging.ERROR, logger="surety_serving.runtime.repository"):
        entries = load_repository(mixed_repository, intra_op_threads=1)
    assert entries["digits"].versions.keys() == {1}
    messages = "\n".join(record.getMessage() for record in caplog.records)
    config = mixed_repository / "broken" / "config.yaml"
    assert f"model 'broken' not loaded: {config}: batching.max_batch_size:" in messages
    assert "Input should be greater than 0" in messages
    assert "output 'block1_features' is tensor(float) in the graph, FP64 in config.yaml" in messages
    assert "model 'digits' version 3 not loaded" in messages


def test_good_model_serves_beside_broken_ones(mixed_server, images):
    with httpx.Client(base_url=mixed_server) as client:
        response = client.post("/v2/models/digits/infer", json=image_request(images[:2]))
        assert response.status_code == 200
        assert response.json()["model_version"] == "1"  # the highest version that loaded
        assert client.get("/v2/models/digits/versions/1/ready").status_code == 200


def test_readiness_reports_the_broken_entries(mixed_server):
    with httpx.Client(base_url=mixed_server) as client:
        response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert "model 'broken'" in error
    assert "batching.max_batch_size" in error
    assert "model 'mismatch'" in error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/broken/infer"),
        ("POST", "/v2/models/broken/score"),
        ("GET", "/v2/models/broken"),
        ("GET", "/v2/models/broken/ready"),
        ("GET", "/v2/models/digits/versions/3/ready"),
        ("POST", "/v2/models/digits/versions/3/infer"),
    ],
)
def test_unloaded_models_get_503(mixed_server, method, path, images):
    with httpx.Client(base_url=mixed_server) as client:
        response = client.request(method, path, json=image_request(images[:1]))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "not ready" in response.json()["error"]


def test_relaxed_readiness_is_ready_while_one_model_serves(mixed_repository):
    settings = Settings(model_repository=mixed_repository, strict_readiness=False)
    with running_server(settings) as url:
        assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}


def test_missing_repository_stops_startup(tmp_path):
    with pytest.raises(ConfigError, match="surety build-defaults"):
        load_repository(tmp_path / "absent", intra_op_threads=1)
