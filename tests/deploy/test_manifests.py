"""The Kubernetes and KServe manifests, checked offline.

Schemas: every resource is validated against the Kubernetes JSON schemas of one pinned release,
as bundled by the ``kubernetes-validate`` package, in their strict form (unknown fields are
errors, as with ``kubectl apply --validate=strict``); the InferenceService against KServe's CRD
schema, vendored in tests/deploy/schemas/ (see its README), closed the same way. Kustomize
renders the kustomization when ``kubectl`` is installed (its built-in kustomize works offline).

Invariants: what the schemas cannot know, i.e. that the manifests fit this server: probes on its
real health routes, a grace period that outlasts its drain, the image's user, selectors that
match, and the KServe predictor in step with the Deployment.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from fastapi.routing import APIRoute

from surety_serving.api import routers
from surety_serving.api.security import Access
from surety_serving.cli import DEFAULT_MODELS
from surety_serving.main import create_app
from surety_serving.metrics import Metrics
from surety_serving.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
INFERENCE_SERVICE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = (
    Path(__file__).resolve().parent / "schemas" / "kserve-inferenceservice-v1beta1.json.gz"
)
DOCKERFILE = ROOT / "Dockerfile"

#: The oldest release the manifests are for: the first where the kubelet's preStop `sleep`
#: action is on by default. kubernetes-validate takes the newest bundled schema not above it.
KUBERNETES_VERSION = "1.30.0"
#: The image's user when no Dockerfile says otherwise.
IMAGE_UID = 10001
#: Files that are no resource of their own: strategic-merge patches, applied by kustomize.
PATCHES = {K8S / "components" / "model-volume" / "deployment-patch.yaml"}
#: Documented alternatives, not in the kustomization (one HPA per Deployment).
ALTERNATIVES = {K8S / "hpa-custom-metric.yaml"}
#: Predictor fields that are KServe's, around the embedded PodSpec.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "annotations",
}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_one(path: Path) -> dict[str, Any]:
    (doc,) = load_all(path)
    return doc


def is_kustomization(path: Path) -> bool:
    return path.name == "kustomization.yaml"


def resource_files() -> list[Path]:
    """Every manifest under deploy/k8s that is a resource of its own."""
    return sorted(
        path for path in K8S.rglob("*.yaml") if not is_kustomization(path) and path not in PATCHES
    )


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def deployment() -> dict[str, Any]:
    return load_one(K8S / "deployment.yaml")


@cache
def inference_service() -> dict[str, Any]:
    return load_one(INFERENCE_SERVICE)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (server,) = pod_spec()["containers"]
    return server


def predictor_container() -> dict[str, Any]:
    (server,) = inference_service()["spec"]["predictor"]["containers"]
    return server


def env_of(server: dict[str, Any]) -> dict[str, Any]:
    """name → value, or the valueFrom mapping for variables that are not literals."""
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in server["env"]}


def k8s_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# -- the validators themselves ---------------------------------------------------------------


def closed(schema: Any) -> Any:
    """A CRD schema in which objects with declared properties reject undeclared ones.

    CRD schemas leave objects open (the API server prunes unknown fields, and strict field
    validation rejects them); JSON Schema would accept any extra key, so a typo would pass.
    Objects that keep unknown fields on purpose (x-kubernetes-preserve-unknown-fields) or map
    arbitrary keys (additionalProperties) stay as they are.
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {key: closed(value) for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        node["properties"] = {name: closed(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            node["additionalProperties"] = False
    return node


@cache
def kserve_validator() -> Any:
    schema = closed(json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes())))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def kserve_errors(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in kserve_validator().iter_errors(doc)
    ]


def test_strict_validation_catches_a_misspelt_field():
    """Neither validator passes everything: a misspelt field is an error in each."""
    doc = copy.deepcopy(deployment())
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(doc)
    isvc = copy.deepcopy(inference_service())
    isvc["spec"]["predictor"]["containers"][0]["readinesProbe"] = {"periodSeconds": 2}
    assert any("readinesProbe" in error for error in kserve_errors(isvc))
    isvc = copy.deepcopy(inference_service())
    isvc["spec"]["predictor"]["scaleMetric"] = "queue"
    assert kserve_errors(isvc)


# -- schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", resource_files(), ids=rel)
def test_manifest_is_valid_kubernetes(path):
    for doc in load_all(path):
        k8s_validate(doc)


def test_inference_service_is_valid_for_kserve():
    assert kserve_errors(inference_service()) == []


def test_inference_service_pod_spec_is_valid_kubernetes():
    """KServe's CRD copies the PodSpec of its own Kubernetes release; the predictor must also
    be a valid PodSpec of the release the Deployment is checked against."""
    predictor = inference_service()["spec"]["predictor"]
    spec = {key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS}
    k8s_validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})


def test_every_file_belongs_to_the_kustomization():
    """A manifest nobody applies is a manifest nobody checks in a cluster."""
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        config = load_one(kustomization)
        for entry in config.get("resources", []):
            assert (kustomization.parent / entry).is_file(), f"{rel(kustomization)}: {entry}"
            listed.add((kustomization.parent / entry).resolve())
        for patch in config.get("patches", []):
            assert (kustomization.parent / patch["path"]).resolve() in PATCHES
    assert set(resource_files()) - ALTERNATIVES == listed


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # As the image tests do: a skip must not pass CI silently (this machine image has
        # kubectl, from the Google Cloud CLI packages).
        reason = "kubectl (for its built-in kustomize) is not installed"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kustomization_renders_valid_resources():
    docs = kustomize(K8S)
    assert sorted(doc["kind"] for doc in docs) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    for doc in docs:
        k8s_validate(doc)


def test_model_volume_component_mounts_the_repository(tmp_path):
    # Kustomize takes no absolute paths and no folder that contains the kustomization: a
    # kustomization beside the checkout that names both by relative path.
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S, tmp_path)],
                "components": [os.path.relpath(K8S / "components" / "model-volume", tmp_path)],
            }
        )
    )
    docs = {doc["kind"]: doc for doc in kustomize(tmp_path)}
    for doc in docs.values():
        k8s_validate(doc)
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    assert "tmp" in volumes, "the patch must add the volume, not replace the list"
    mounts = {mount["name"]: mount for mount in server["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert mounts["models"]["mountPath"] == env_of(server)["SURETY_MODEL_REPOSITORY"]


# -- invariants: the manifests fit this server -------------------------------------------------


SERVERS = ["deployment", "inferenceservice"]


def server(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, server container) of the Deployment or of the KServe predictor."""
    if name == "deployment":
        return pod_spec(), container()
    return inference_service()["spec"]["predictor"], predictor_container()


def open_get_routes() -> tuple[set[str], set[str]]:
    """(every GET path of the app, the GET paths that need no key)."""
    # The app's own document lists what it serves (its routers are mounted lazily, so
    # app.routes does not show them).
    document = create_app(Settings()).openapi()
    every = {path for path, operations in document["paths"].items() if "get" in operations}
    open_paths = {
        route.path
        for router, access in routers()
        if access in (Access.OPEN, Access.METRICS)
        for route in router.routes
        if isinstance(route, APIRoute)
    }
    return every, open_paths


@pytest.mark.parametrize("name", SERVERS)
def test_probes_use_the_health_routes(name):
    spec, main = server(name)
    every, open_paths = open_get_routes()
    port_names = {port["name"] for port in main["ports"]}
    probes = {
        kind: main[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")
    }
    assert probes["liveness"]["path"] == "/v2/health/live"
    assert probes["startup"]["path"] == "/v2/health/live"
    assert probes["readiness"]["path"] == "/v2/health/ready"
    for probe in probes.values():
        # Real routes, reachable without an API key (the kubelet has none).
        assert probe["path"] in every
        assert probe["path"] in open_paths
        assert probe["port"] in port_names
    annotations = (
        spec["annotations"]
        if name == "inferenceservice"
        else deployment()["spec"]["template"]["metadata"]["annotations"]
    )
    assert annotations["prometheus.io/path"] in every
    assert annotations["prometheus.io/path"] in open_paths
    assert int(annotations["prometheus.io/port"]) == main["ports"][0]["containerPort"]


@pytest.mark.parametrize("name", SERVERS)
def test_grace_period_outlasts_the_drain(name):
    spec, main = server(name)
    defaults = Settings()
    env = env_of(main)
    drain_s = float(env.get("SURETY_DRAIN_S", defaults.drain_s))
    shutdown_s = float(env.get("SURETY_SHUTDOWN_TIMEOUT_S", defaults.shutdown_timeout_s))
    pre_stop_s = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = spec["terminationGracePeriodSeconds"]
    # SIGTERM comes after the preStop hook; the server then serves on for drain_s and exits
    # by shutdown_s at the latest: the kubelet's SIGKILL must come after both.
    assert grace_s > pre_stop_s + drain_s
    assert grace_s > pre_stop_s + shutdown_s
    # Readiness fails within the drain window, so the endpoint goes before the listener closes.
    readiness = main["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain_s


def dockerfile_user() -> tuple[int, str | None]:
    """(uid, model repository) as the Dockerfile sets them; the defaults when there is none."""
    if not DOCKERFILE.is_file():
        return IMAGE_UID, None
    text = DOCKERFILE.read_text()
    users = re.findall(r"^\s*USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users, "the Dockerfile sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    if not user.isdigit():
        match = re.search(
            rf"(?:useradd|adduser)\b[^\n]*?(?:--uid|-u)\s+(\d+)[^\n]*\b{user}\b", text
        )
        assert match, f"the Dockerfile's USER {user} has no uid this test can find"
        user = match.group(1)
    repositories = re.findall(r"SURETY_MODEL_REPOSITORY=(\S+)", text)
    return int(user), repositories[-1] if repositories else None


@pytest.mark.parametrize("name", SERVERS)
def test_runs_as_the_image_user_on_a_read_only_root(name):
    spec, main = server(name)
    uid, repository = dockerfile_user()
    pod, ctx = spec["securityContext"], main["securityContext"]
    assert pod["runAsNonRoot"] is True and ctx["runAsNonRoot"] is True
    assert pod["runAsUser"] == ctx["runAsUser"] == uid
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    assert ctx["readOnlyRootFilesystem"] is True
    # What the server writes (ORT's cache, under XDG_CACHE_HOME) lies on an emptyDir.
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    writable = {
        mount["mountPath"]
        for mount in main["volumeMounts"]
        if "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")
    }
    cache_home = Path(env_of(main)["XDG_CACHE_HOME"])
    assert any(cache_home.is_relative_to(path) for path in writable)
    if repository is not None:
        assert env_of(main)["SURETY_MODEL_REPOSITORY"] == repository


@pytest.mark.parametrize("name", SERVERS)
def test_settings_from_the_manifest(name, monkeypatch):
    """The environment the manifest gives makes the server listen on the container port, with
    one inference thread per CPU of the limit."""
    spec, main = server(name)
    assert spec["enableServiceLinks"] is False
    env = env_of(main)
    workers = env["SURETY_INFERENCE_WORKERS"]["resourceFieldRef"]
    assert workers == {"containerName": main["name"], "resource": "limits.cpu", "divisor": "1"}
    for variable in list(os.environ):
        if variable.startswith("SURETY_"):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        if variable.startswith("SURETY_") and isinstance(value, str):
            monkeypatch.setenv(variable, value)
    # What the downward API hands over for a limit of 2 CPUs.
    monkeypatch.setenv("SURETY_INFERENCE_WORKERS", main["resources"]["limits"]["cpu"])
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == main["ports"][0]["containerPort"] == 8000
    assert settings.workers() == int(main["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("name", SERVERS)
def test_resources_are_bounded(name):
    _, main = server(name)
    resources = main["resources"]
    assert set(resources["limits"]) >= {"cpu", "memory"}
    # Requests = limits: Guaranteed QoS, and the pod's CPUs are the ones the threads assume.
    assert resources["requests"] == resources["limits"]
    assert resources["limits"] == {"cpu": "2", "memory": "2Gi"}


def test_selectors_match_the_pods():
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert deployment()["spec"]["selector"]["matchLabels"] == labels
    service = load_one(K8S / "service.yaml")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == 8000
    assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    pdb = load_one(K8S / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("path", [K8S / "hpa.yaml", *ALTERNATIVES], ids=rel)
def test_autoscaler_targets_the_deployment(path):
    hpa = load_one(path)
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": deployment()["apiVersion"],
        "kind": "Deployment",
        "name": deployment()["metadata"]["name"],
    }
    # More replicas than the disruption budget keeps: a node drain can always evict one.
    assert hpa["spec"]["minReplicas"] > load_one(K8S / "pdb.yaml")["spec"]["minAvailable"]


def test_custom_metric_is_the_servers_in_flight_gauge():
    metrics = Metrics()
    families = {family.name: family for family in metrics.registry.collect()}
    for entry in load_one(K8S / "hpa-custom-metric.yaml")["spec"]["metrics"]:
        metric = entry["pods"]["metric"]
        assert metric["name"] == metrics.inflight._name == "surety_inflight_requests"
        assert families[metric["name"]].type == "gauge"
        # Selected per model, by the gauge's own label, on the default models' names.
        assert set(metric["selector"]["matchLabels"]) == set(metrics.inflight._labelnames)
        assert metric["selector"]["matchLabels"]["model"] in DEFAULT_MODELS


def test_inference_service_matches_the_deployment():
    isvc = inference_service()
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in {"RawDeployment", "Standard"}
    predictor = isvc["spec"]["predictor"]
    theirs, ours = predictor_container(), container()
    assert theirs["name"] == "kserve-container"
    assert env_of(theirs)["PROTOCOL"] == "v2"
    for field in (
        "image",
        "ports",
        "resources",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "lifecycle",
        "securityContext",
        "volumeMounts",
    ):
        assert theirs[field] == ours[field], field
    env = copy.deepcopy(env_of(theirs))
    env.pop("PROTOCOL")
    env["SURETY_INFERENCE_WORKERS"]["resourceFieldRef"]["containerName"] = ours["name"]
    assert env == env_of(ours)
    for field in (
        "terminationGracePeriodSeconds",
        "enableServiceLinks",
        "automountServiceAccountToken",
        "securityContext",
        "volumes",
    ):
        assert predictor[field] == pod_spec()[field], field
    hpa = load_one(K8S / "hpa.yaml")["spec"]
    assert predictor["minReplicas"] == hpa["minReplicas"]
    assert predictor["maxReplicas"] == hpa["maxReplicas"]
    assert predictor["scaleMetric"] == hpa["metrics"][0]["resource"]["name"]
    assert predictor["scaleTarget"] == hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
