"""Session fixtures: the digits model built once into a temporary repository, and real uvicorn
servers on free ports serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from surety_kit.server import running_server
from surety_serving.export.classifier import ExportResult
from surety_serving.models import digits
from surety_serving.runtime.config import load_config
from surety_serving.runtime.session import OnnxSession
from surety_serving.settings import Settings
from tests.service import textmodel
from tests.tiers import model_fixture


@model_fixture(scope="session")
def digits_build(tmp_path_factory: pytest.TempPathFactory) -> digits.DigitsBuild:
    """The real default model, trained and exported once per test session."""
    root = tmp_path_factory.mktemp("model_repository")
    return digits.build(root / "digits", progress=False)


@pytest.fixture(scope="session")
def repository(digits_build: digits.DigitsBuild) -> Path:
    return digits_build.entry.parent


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[str]:
    with running_server(Settings(model_repository=repository)) as url:
        yield url


@pytest.fixture(scope="session")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def triton(server: str) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(url=server.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(digits_build: digits.DigitsBuild) -> np.ndarray:
    """Held-out digits, float32 [N, 64], grey levels 0..16."""
    return digits_build.data.x_test


@pytest.fixture(scope="session")
def labels(digits_build: digits.DigitsBuild) -> np.ndarray:
    return digits_build.data.y_test


@pytest.fixture(scope="session")
def direct(repository: Path) -> OnnxSession:
    """A session on the same model.onnx, outside the server: the reference for its answers."""
    entry = repository / "digits"
    return OnnxSession(entry / "1" / "model.onnx", load_config(entry / "config.yaml"))


@model_fixture(scope="session")
def text_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """The tiny text classifier (see tests/service/textmodel.py), exported once per session."""
    return textmodel.build(tmp_path_factory.mktemp("text_export"))


@pytest.fixture(scope="session")
def text_server(text_export: ExportResult) -> Iterator[str]:
    """A real server on the tiny text model's repository (its export, config.yaml included)."""
    with running_server(Settings(model_repository=text_export.model_root.parent)) as url:
        yield url


@pytest.fixture(scope="session")
def text_client(text_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=text_server, timeout=60) as http:
        yield http
