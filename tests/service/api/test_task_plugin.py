"""A model kind added from outside: a task defined in this file only, registered through the
public registry, served by the real server to a real client: its endpoint, the 409s on both
sides, its metrics and its routes in /openapi.json. Nothing in surety_serving.runtime or
surety_serving.api
knows of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.protocol.types import InferResponse, Tensor
from surety_serving.runtime.config import ModelConfig, Strict
from surety_serving.runtime.decoders import Decoded, decode_tensor
from surety_serving.runtime.session import OnnxSession
from surety_serving.settings import Settings
from surety_serving.tasks import registry
from surety_serving.tasks.base import Call, Endpoint, Options, ServedModel, Task
from tests.service.api.test_metrics import scrape, value

pytestmark = pytest.mark.model

WIDTH = 4
MODEL = "echo-model"


class EchoSpec(Strict):
    """The task's own section: which graph output is echoed."""

    output: str


class EchoConfig(ModelConfig):
    task: Literal["echo"]
    echo: EchoSpec


class ServedEcho(ServedModel):
    def __init__(self, config: EchoConfig) -> None:
        self.config = config

    def decode(self, inputs: Mapping[str, Tensor], options: Options) -> Decoded:
        feeds = {}
        for spec in self.config.inputs:
            feeds.update(decode_tensor(spec, inputs[spec.name]))
        return Decoded(feeds, {"echoed": True})


class EchoTask(Task):
    """Echoes its input tensor with a per-row checksum."""

    name = "echo"
    config = EchoConfig
    endpoints = (
        Endpoint(
            "echo",
            "The input back, with each row's sum.",
            "``echo`` on one version of the model.",
            tags=("echo",),
        ),
    )

    def load(self, config: ModelConfig, folder: Path, session: OnnxSession) -> ServedModel:
        assert isinstance(config, EchoConfig)
        return ServedEcho(config)

    async def serve(self, endpoint: str, call: Call) -> InferResponse:
        assert isinstance(call.served, ServedEcho)
        outputs, notes = await call.run()
        echoed = outputs[call.served.config.echo.output]
        checksum = echoed.astype(np.float64).sum(axis=1)
        return call.respond(
            [Tensor("echo", "FP32", echoed), Tensor("checksum", "FP64", checksum)], notes
        )


def write_echo_model(folder: Path) -> None:
    """An Identity graph x → y and the config.yaml of task echo."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    config = {
        "task": "echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, WIDTH]}],
        "echo": {"output": "y"},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def echo_client(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """The echo task registered, and a server with an echo model beside a copy of digits."""
    registry.register_task(EchoTask())
    try:
        root = tmp_path_factory.mktemp("echo_repository")
        shutil.copytree(repository / "digits", root / "digits")
        write_echo_model(root / MODEL)
        settings = Settings(model_repository=root)
        with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        registry.unregister_task(EchoTask.name)


def echo_body(rows: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]
    }


@pytest.mark.parametrize("path", ["echo", "versions/1/echo"])
def test_the_task_endpoint_answers(echo_client, path):
    rows = np.arange(3 * WIDTH, dtype=np.float32).reshape(3, WIDTH)
    response = echo_client.post(f"/v2/models/{MODEL}/{path}", json=echo_body(rows))
    got = outputs(response)
    np.testing.assert_array_equal(got["echo"], rows)
    np.testing.assert_allclose(got["checksum"], rows.sum(axis=1))
    body = response.json()
    assert body["model_name"] == MODEL and body["model_version"] == "1"
    assert body["parameters"]["echoed"] is True


def test_infer_is_served_for_every_task(echo_client):
    rows = np.ones((2, WIDTH), dtype=np.float32)
    assert outputs(echo_client.post(f"/v2/models/{MODEL}/infer", json=echo_body(rows)))[
        "y"
    ].shape == (2, WIDTH)


@pytest.mark.parametrize("endpoint", ["score", "uncertainty", "judge"])
def test_other_tasks_endpoints_are_409_naming_what_it_serves(echo_client, endpoint):
    rows = np.ones((1, WIDTH), dtype=np.float32)
    response = echo_client.post(f"/v2/models/{MODEL}/{endpoint}", json=echo_body(rows))
    assert response.status_code == 409
    assert response.json() == {
        "error": f"model '{MODEL}' (task: echo) does not serve /{endpoint}; it serves /infer, /echo"
    }


def test_its_endpoint_on_other_models_is_409(echo_client, images):
    response = echo_client.post("/v2/models/digits/echo", json=image_request(images[:1]))
    assert response.status_code == 409
    assert response.json() == {
        "error": "model 'digits' (task: classifier) does not serve /echo; "
        "it serves /infer, /score, /uncertainty"
    }


def test_requests_are_counted(echo_client):
    before = scrape(echo_client)
    rows = np.ones((1, WIDTH), dtype=np.float32)
    for _ in range(2):
        echo_client.post(f"/v2/models/{MODEL}/echo", json=echo_body(rows))
    echo_client.post(f"/v2/models/{MODEL}/score", json=echo_body(rows))
    after = scrape(echo_client)
    labels = {"endpoint": "echo", "model": MODEL, "code": "200"}
    assert (
        value(after, "surety_requests_total", **labels)
        - value(before, "surety_requests_total", **labels)
        == 2
    )
    refused = {"endpoint": "score", "model": MODEL, "code": "409"}
    assert (
        value(after, "surety_requests_total", **refused)
        - value(before, "surety_requests_total", **refused)
        == 1
    )
    assert value(after, "surety_batch_size_count", model=MODEL) > value(
        before, "surety_batch_size_count", model=MODEL
    )


def test_it_is_documented_and_advertised(echo_client):
    document = echo_client.get("/openapi.json").json()
    for path in ("/v2/models/{model}/echo", "/v2/models/{model}/versions/{version}/echo"):
        operation = document["paths"][path]["post"]
        assert operation["tags"] == ["echo"]
        assert {"200", "400", "404", "409", "429", "503", "504"} <= set(operation["responses"])
    assert "echo" in echo_client.get("/v2").json()["extensions"]
    assert echo_client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}


class Clash(EchoTask):
    name = "clash"
    endpoints = (Endpoint("score", "another score", "another score, versioned"),)


class Reserved(EchoTask):
    name = "reserved"
    endpoints = (Endpoint("ready", "ready", "ready"),)


class Unroutable(EchoTask):
    name = "unroutable"
    endpoints = (Endpoint("a/b", "a path", "a path"),)


class Impostor(EchoTask):
    name = "classifier"


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (Clash(), "endpoint 'score' differs from task 'classifier''s"),
        (Reserved(), "endpoint 'ready' is reserved"),
        (Unroutable(), "endpoint 'a/b' is not a path segment"),
        (Impostor(), "task 'classifier' is registered already"),
    ],
)
def test_the_registry_refuses_clashes(task, message):
    with pytest.raises(ValueError, match=message):
        registry.register_task(task)
    assert [t.name for t in registry.tasks()][:2] == ["classifier", "judge"]
    assert registry.get_task("classifier").__class__.__name__ == "ClassifierTask"
