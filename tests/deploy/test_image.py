"""The Docker image end to end: built from the working tree with the project's scripts, run as
users run it, asked real questions through tritonclient, then stopped the way Docker stops it.

Checked: the image's size and metadata, what it leaves out (no torch, no compiler, no pip), cold
start to ready, Docker's own HEALTHCHECK, a non-root server as PID 1, infer / score /
uncertainty on both default models, /metrics, and a `docker stop` that drains and exits 0 well
within the grace period. Measurements are printed in the "surety image" summary section.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from tests.deploy.conftest import REPORT, ROOT, Built, Container, docker, logs, tail
from tests.deploy.test_observability import assert_dashboard_has_data

pytestmark = [pytest.mark.image, pytest.mark.slow]

#: The first of scikit-learn's digits, a 0 (README.md's example), and an all-white square.
DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4,
              12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5,
              10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # fmt: skip
WHITE = [16] * 64
FORTUNES = [
    "Real programmers do not comment their code. If it was hard to write, it should be hard to "
    "understand.",
    "Never eat more than you can lift.",
]
#: The target for the image; a runtime with torch or a compiler would be several times this.
MAX_IMAGE_BYTES = 1_000_000_000
#: Cold start, `docker start` to ready: the server's imports, loading and warming up both models.
MAX_START_TO_READY_S = 10.0
#: `docker stop -t 30`: the drain (SURETY_DRAIN_S, 5 s by default) and the exit must fit well
#: inside that grace period.
STOP_GRACE_S = 30
MAX_STOP_S = 15.0


@pytest.fixture(scope="module")
def triton(container: Container):
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{container.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(container: Container):
    with httpx.Client(base_url=container.url, timeout=30) as client:
        yield client


def images(*rows: list[int]) -> triton_http.InferInput:
    batch = np.array(rows, dtype=np.float32)
    tensor = triton_http.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    return tensor


def texts(*rows: str) -> triton_http.InferInput:
    batch = np.array([row.encode() for row in rows], dtype=np.object_)
    tensor = triton_http.InferInput("text", list(batch.shape), "BYTES")
    tensor.set_data_from_numpy(batch, binary_data=False)
    return tensor


def extension(
    http: httpx.Client,
    model: str,
    endpoint: str,
    inputs: list[triton_http.InferInput],
    outputs: list[str],
    parameters: dict[str, Any] | None = None,
) -> triton_http.InferResult:
    """POST an OIP request to one of Surety's extension endpoints (score, uncertainty):
    tritonclient builds the body (binary tensors included) and parses the answer, as for infer;
    only the URL is one tritonclient's ``infer`` cannot name."""
    requested = [triton_http.InferRequestedOutput(name, binary_data=False) for name in outputs]
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        inputs, outputs=requested, parameters=parameters
    )
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    response = http.post(f"/v2/models/{model}/{endpoint}", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header_length = response.headers.get("Inference-Header-Content-Length")
    return triton_http.InferenceServerClient.parse_response_body(
        response.content, header_length=int(header_length) if header_length else None
    )


def strings(result: triton_http.InferResult, name: str) -> list[str]:
    array = result.as_numpy(name)
    assert array is not None, f"no output {name!r}"
    return [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]


def numbers(result: triton_http.InferResult, name: str) -> np.ndarray:
    array = result.as_numpy(name)
    assert array is not None, f"no output {name!r}"
    return array


def labels_of(model: str) -> list[str]:
    """The labels the image's copy of the repository has (the same files as ./model_repository)."""
    if model == "fortune-topics":
        return (ROOT / "model_repository" / model / "labels.txt").read_text().split()
    return [str(digit) for digit in range(10)]


# -- the image itself ----------------------------------------------------------------------------


def test_image_is_small_and_labelled(image: Built):
    inspect = json.loads(docker("image", "inspect", image.tag).stdout)[0]
    config = inspect["Config"]
    assert image.size_bytes < MAX_IMAGE_BYTES, f"{image.size_bytes / 1e6:.0f} MB"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "surety"
    # The commit (with -dirty for uncommitted changes), or "unknown" outside a git checkout.
    assert labels["org.opencontainers.image.revision"]
    assert config["User"] == "10001:10001"
    assert "8000/tcp" in config["ExposedPorts"]
    # Exec form: the server itself is PID 1 and receives SIGTERM (no shell in between).
    assert config["Entrypoint"] == ["surety"] and config["Cmd"] == ["serve"]
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["SURETY_HOST"] == "0.0.0.0"
    assert env["SURETY_MODEL_REPOSITORY"] == "/models"


def test_runtime_carries_no_torch_compiler_or_pip(container: Container):
    found = docker(
        "exec", container.name, "python3", "-c",
        "import importlib.util as u; "
        "print(','.join(m for m in ('torch', 'transformers', 'sklearn', 'pip', 'pytest')"
        " if u.find_spec(m)))",
    ).stdout.strip()  # fmt: skip
    assert found == "", f"the runtime image has {found}"
    tools = docker(
        "exec", container.name, "bash", "-c", "command -v gcc g++ cc c++ make cmake pip curl",
        check=False,
    ).stdout.strip()  # fmt: skip
    assert tools == "", f"the runtime image has {tools}"


def test_server_runs_as_non_root_pid_1(container: Container):
    assert docker("exec", container.name, "id", "-u").stdout.strip() == "10001"
    status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[-3:] == ["/opt/venv/bin/surety", "serve", ""], cmdline
    # docker top reads the host's view of the same process: not root there either.
    top = docker("top", container.name, "-o", "uid,pid,args").stdout.splitlines()
    assert all(line.split()[0] != "0" for line in top[1:]), top


# -- starting ------------------------------------------------------------------------------------


def test_cold_start_to_ready(container: Container):
    assert container.start_to_ready_s < MAX_START_TO_READY_S


def test_healthcheck_reports_healthy(container: Container):
    """Docker's own HEALTHCHECK (the image's python -c urllib probe) turns healthy."""
    deadline = time.monotonic() + 60
    while True:
        health = json.loads(
            docker("inspect", "--format", "{{json .State.Health}}", container.name).stdout
        )
        if health["Status"] == "healthy":
            break
        assert health["Status"] == "starting", health["Log"][-3:]
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
    assert health["Log"][-1]["ExitCode"] == 0


# -- serving -------------------------------------------------------------------------------------


def test_metadata_and_readiness_through_tritonclient(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert {"score", "uncertainty"} <= set(server["extensions"])
    for model in ("digits", "fortune-topics"):
        assert triton.is_model_ready(model)
        assert triton.get_model_metadata(model)["name"] == model


def test_infer_digits(triton):
    result = triton.infer(
        "digits",
        [images(DIGIT_ZERO)],
        outputs=[triton_http.InferRequestedOutput("probabilities", binary_data=True)],
        request_id="image-test",
    )
    assert result.get_response()["id"] == "image-test"
    probabilities = numbers(result, "probabilities")
    assert probabilities.shape == (1, 10)
    assert int(probabilities.argmax()) == 0 and probabilities[0, 0] > 0.9


def test_infer_fortune_topics(triton):
    result = triton.infer(
        "fortune-topics",
        [texts(*FORTUNES)],
        outputs=[triton_http.InferRequestedOutput("probabilities", binary_data=True)],
    )
    probabilities = numbers(result, "probabilities")
    assert probabilities.shape == (2, len(labels_of("fortune-topics")))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_score_digits_with_temperature(http):
    sharp = extension(http, "digits", "score", [images(DIGIT_ZERO)], ["probabilities"])
    flat = extension(
        http,
        "digits",
        "score",
        [images(DIGIT_ZERO)],
        ["probabilities", "predicted_label"],
        parameters={"temperature": 4.0},
    )
    assert flat.get_response()["parameters"]["temperature"] == 4.0
    assert strings(flat, "predicted_label") == ["0"]
    # The temperature flattens the distribution (README: ≈ 1 at 1, ≈ 0.71 at 4).
    assert numbers(sharp, "probabilities")[0, 0] > numbers(flat, "probabilities")[0, 0] > 0.3


def test_score_fortune_topics(http):
    result = extension(http, "fortune-topics", "score", [texts(*FORTUNES)], ["predicted_label"])
    predicted = strings(result, "predicted_label")
    assert set(predicted) <= set(labels_of("fortune-topics"))
    assert predicted[0] == "computers"


def test_uncertainty_digits_flags_the_white_square(http):
    result = extension(
        http,
        "digits",
        "uncertainty",
        [images(DIGIT_ZERO, WHITE)],
        ["predicted_label", "mahalanobis_score", "ood", "sdm_reliable", "sdm_p_lower"],
    )
    assert result.get_response()["parameters"]["ood_detectors"]
    assert strings(result, "predicted_label")[0] == "0"
    assert numbers(result, "ood").tolist() == [False, True]
    assert not numbers(result, "sdm_reliable")[1]
    score = numbers(result, "mahalanobis_score")
    assert score[0] > score[1]


def test_uncertainty_fortune_topics(http):
    result = extension(
        http,
        "fortune-topics",
        "uncertainty",
        [texts(*FORTUNES)],
        ["predicted_label", "mahalanobis_score", "ood", "sdm_reliable", "sdm_p_lower"],
    )
    for name in ("mahalanobis_score", "ood", "sdm_reliable", "sdm_p_lower"):
        assert numbers(result, name).shape == (2,)
    assert np.all((numbers(result, "sdm_p_lower") >= 0) & (numbers(result, "sdm_p_lower") <= 1))


def test_metrics_count_the_requests(http):
    text = http.get("/metrics").text
    samples = [
        line
        for line in text.splitlines()
        if line.startswith("surety_requests_total{") and 'model="digits"' in line
    ]
    assert samples, tail(text)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in samples) >= 4


def test_prometheus_scrapes_the_container(container: Container, tmp_path):
    """The compose stack's scrape config and recording rules, in a real Prometheus on the host,
    against the running container: every Grafana dashboard expression returns data."""
    assert_dashboard_has_data(
        container.url, ROOT / "model_repository", "digits", "fortune-topics", tmp_path
    )


# -- stopping (last: the container is gone afterwards) -------------------------------------------


def test_docker_stop_drains_then_exits_zero(container: Container, http):
    """`docker stop` sends SIGTERM to PID 1: readiness turns 503 at once while requests are
    still served (the drain window), then the server exits 0 long before Docker's SIGKILL."""
    started = time.monotonic()
    stop = subprocess.Popen(
        ["docker", "stop", "--time", str(STOP_GRACE_S), container.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while http.get("/v2/health/ready").status_code != 503:
            assert time.monotonic() - started < 3, "readiness still 200 3 s after docker stop"
            time.sleep(0.05)
        # Draining, not gone: a request sent now is still answered.
        during = extension(http, "digits", "score", [images(DIGIT_ZERO)], ["predicted_label"])
        assert strings(during, "predicted_label") == ["0"]
        stop.communicate(timeout=STOP_GRACE_S + 30)
    finally:
        if stop.poll() is None:
            stop.kill()
    stopped_s = time.monotonic() - started
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container.name).stdout)
    output = logs(container.name)
    REPORT.append(f"docker stop -t {STOP_GRACE_S}: exited {state['ExitCode']} in {stopped_s:.1f} s")
    assert stop.returncode == 0
    assert state["Status"] == "exited" and not state["OOMKilled"]
    assert state["ExitCode"] == 0, tail(output)
    assert stopped_s < MAX_STOP_S
    assert "shutting down: readiness 503, serving on for" in output, tail(output)
    assert "Application shutdown complete" in output, tail(output)
    assert "Finished server process" in output, tail(output)
