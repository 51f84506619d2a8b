"""The OpenAPI document says what the server really answers: pinned defects, then schemathesis
against the real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from surety_serving.api.errors import ALL_ERRORS

pytestmark = pytest.mark.model

INFERENCE_ROUTES = [
    f"/v2/models/{{model}}{version}/{route}"
    for version in ("", "/versions/{version}")
    for route in ("infer", "score", "uncertainty", "judge")
]
#: Each route's 200 model and the properties it must declare.
OK_SCHEMAS = {
    ("get", "/v2"): ("ServerMetadata", {"name", "version", "extensions"}),
    ("get", "/v2/health/live"): ("Liveness", {"live"}),
    ("get", "/v2/health/ready"): ("Readiness", {"ready"}),
    ("get", "/v2/models/{model}"): ("ModelMetadata", {"name", "versions", "inputs", "outputs"}),
    ("get", "/v2/models/{model}/versions/{version}"): ("ModelMetadata", {"name", "inputs"}),
    ("get", "/v2/models/{model}/ready"): ("ModelReadiness", {"name", "ready"}),
    ("get", "/v2/models/{model}/versions/{version}/ready"): ("ModelReadiness", {"ready"}),
    **{
        ("post", path): ("InferenceResponse", {"model_name", "model_version", "id", "outputs"})
        for path in INFERENCE_ROUTES
    },
}

#: schemathesis' configuration: 503 (shedding, draining) and 504 (a fuzzed Request-Timeout
#: of 1e-300 s) are answers, not server errors; the dictionaries steer most generated requests
#: to the served model, so that they reach the codec and the data plane rather than a 404.
SCHEMATHESIS_CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[dictionaries.models]
values = ["digits"]
[dictionaries.versions]
values = [1]
[dictionaries.inputs]
values = ["image"]
[dictionaries.outputs]
values = ["probabilities", "logits", "predicted_label", "mahalanobis_score", "sdm_reliable"]

[parameters."path.model"]
dictionary = "models"
probability = 0.8
[parameters."path.version"]
dictionary = "versions"
probability = 0.8
[parameters."body.inputs[*].name"]
dictionary = "inputs"
probability = 0.8
[parameters."body.outputs[*].name"]
dictionary = "outputs"
probability = 0.8
"""
SCHEMATHESIS_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
)


@pytest.fixture(scope="module")
def document(client: httpx.Client) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def operations(document: dict[str, Any]):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].removeprefix("#/components/schemas/")
    return document["components"]["schemas"][name]


def test_every_200_is_its_model(document):
    for method, path, operation in operations(document):
        if path == "/metrics":
            continue
        name, properties = OK_SCHEMAS[method, path]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}, path
        model = resolve(document, schema)
        assert model["type"] == "object"
        assert properties <= set(model["properties"]), path


def test_metrics_is_prometheus_text(document):
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain"
    ]


@pytest.mark.parametrize("path", INFERENCE_ROUTES)
def test_inference_routes_declare_their_body_and_headers(document, path):
    operation = document["paths"][path]["post"]
    content = operation["requestBody"]["content"]
    assert resolve(document, content["application/json"]["schema"])["required"] == ["inputs"]
    assert content["application/octet-stream"]["schema"]["format"] == "binary"
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"Request-Timeout", "Inference-Header-Content-Length"}
    parameters = resolve(document, {"$ref": "#/components/schemas/InferenceRequest"})
    known = parameters["properties"]["parameters"]["properties"]
    assert {"timeout_ms", "temperature", "binary_data_output"} <= set(known)
    assert "application/octet-stream" in operation["responses"]["200"]["content"]


def test_version_is_only_a_path_parameter_of_versioned_routes(document):
    for _, path, operation in operations(document):
        locations = {p["in"] for p in operation.get("parameters", []) if p["name"] == "version"}
        assert locations == ({"path"} if "{version}" in path else set()), path


def test_no_422_anywhere(document):
    for _, path, operation in operations(document):
        assert "422" not in operation["responses"], path
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_errors_are_documented_from_the_table(document):
    sent = {spec.status for spec in ALL_ERRORS.values()} | {500}
    for _, path, operation in operations(document):
        errors = {int(s): r for s, r in operation["responses"].items() if s != "200"}
        assert 500 in errors, path
        assert set(errors) <= sent, path
        for status, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert resolve(document, schema)["required"] == ["error"]
            assert ("Retry-After" in response.get("headers", {})) == (status in (429, 503))
    for path in INFERENCE_ROUTES:
        statuses = set(document["paths"][path]["post"]["responses"])
        assert {"400", "404", "408", "413", "429", "503", "504", "500"} <= statuses
        # Every task endpoint may answer 409 (not served by the model's task); infer never.
        assert ("409" in statuses) == (not path.endswith("infer"))
    assert set(document["paths"]["/v2/health/live"]["get"]["responses"]) == {"200", "500"}
    assert "503" in document["paths"]["/v2/health/ready"]["get"]["responses"]


def test_without_keys_nothing_about_keys_is_documented(document):
    assert "securitySchemes" not in document["components"]
    for _, path, operation in operations(document):
        assert "401" not in operation["responses"], path
        assert "security" not in operation, path


def test_docs_load_nothing_from_a_third_party(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"https?://", page.text)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.content
    assert "SwaggerUIBundle" in client.get("/docs/swagger-ui-bundle.js").text
    # Only what the page loads: not the bundle's demo page, and no ReDoc (it used a CDN too).
    assert client.get("/docs/index.html").status_code == 404
    assert client.get("/redoc").status_code == 404


@pytest.mark.slow  # fuzzing: a few hundred generated requests
def test_schemathesis_finds_nothing(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{server}/openapi.json",
        "--checks",
        ",".join(SCHEMATHESIS_CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20261130",
        "--max-examples",
        "50",
        "--workers",
        "1",
        "--no-color",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]


#: Every operation as it was before model kinds became task plug-ins (method, path, operation
#: id, tags): the task routes are built from the registry now, and must not have moved.
OPERATIONS = {
    ("get", "/metrics", "metrics_metrics_get", ("metrics",)),
    ("get", "/v2", "server_metadata_v2_get", ("health",)),
    ("get", "/v2/health/live", "live_v2_health_live_get", ("health",)),
    ("get", "/v2/health/ready", "ready_v2_health_ready_get", ("health",)),
    ("get", "/v2/models/{model}", "model_metadata_v2_models__model__get", ("models",)),
    ("get", "/v2/models/{model}/ready", "model_ready_v2_models__model__ready_get", ("models",)),
    (
        "get",
        "/v2/models/{model}/versions/{version}",
        "model_metadata_v2_models__model__versions__version__get",
        ("models",),
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}/ready",
        "model_ready_v2_models__model__versions__version__ready_get",
        ("models",),
    ),
    ("post", "/v2/models/{model}/infer", "infer_v2_models__model__infer_post", ("inference",)),
    ("post", "/v2/models/{model}/judge", "judge_v2_models__model__judge_post", ("judge",)),
    ("post", "/v2/models/{model}/score", "score_v2_models__model__score_post", ("extensions",)),
    (
        "post",
        "/v2/models/{model}/uncertainty",
        "uncertainty_v2_models__model__uncertainty_post",
        ("extensions",),
    ),
    (
        "post",
        "/v2/models/{model}/versions/{version}/infer",
        "infer_v2_models__model__versions__version__infer_post",
        ("inference",),
    ),
    (
        "post",
        "/v2/models/{model}/versions/{version}/judge",
        "judge_v2_models__model__versions__version__judge_post",
        ("judge",),
    ),
    (
        "post",
        "/v2/models/{model}/versions/{version}/score",
        "score_v2_models__model__versions__version__score_post",
        ("extensions",),
    ),
    (
        "post",
        "/v2/models/{model}/versions/{version}/uncertainty",
        "uncertainty_v2_models__model__versions__version__uncertainty_post",
        ("extensions",),
    ),
}


def test_the_operations_are_those_served_before_the_task_registry(document):
    served = {
        (method, path, operation["operationId"], tuple(operation["tags"]))
        for method, path, operation in operations(document)
    }
    assert served == OPERATIONS
