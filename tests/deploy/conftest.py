"""Fixtures of the image tests (test_image.py): a Docker engine, the image built from the working
tree, and a container of it serving on a free port.

Everything goes through the project's own scripts (scripts/docker/), as `make image` does, so
the test builds what users build. Without an engine the tests are skipped with the reason
spelled out, except in CI (CI=true), where an engine that engine.sh could not start is a
failure: a skipped image test must not pass a submission silently.

The fixtures are requested by name only (nothing autouse): the other deploy tests in this
folder never start an engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from surety_kit import server as kit
from tests.deploy.prometheus import in_ci

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "docker"
#: The tag the tests build: apart from `make image`'s surety:latest, sharing its layer cache.
IMAGE = os.environ.get("SURETY_TEST_IMAGE", "surety:test")
#: Where the build's output goes (the test reports only its tail on failure).
BUILD_LOG = ROOT / "build" / "docker" / "test-build.log"
#: Cold caches: engine install, base, wheelhouse, default models (~5 min), image (~3 min); a
#: guard against a hung build, not a speed bound: on a machine busy with other work the models'
#: fine-tuning alone took over 30 minutes.
BUILD_TIMEOUT_S = 3600
#: The longest the server may take to report ready before the test gives up on it.
READY_TIMEOUT_S = 60.0

#: Lines for the terminal summary: what the image tests measured (size, cold start, stop).
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the image measurements after the run, also when pytest captured the tests' output."""
    if REPORT:
        terminalreporter.section("surety image")
        for line in REPORT:
            terminalreporter.write_line(line)


def unavailable(reason: str) -> NoReturn:
    """Skip loudly with the reason, or fail in CI, where the engine is part of the test."""
    if in_ci():
        pytest.fail(f"CI=true and the Docker image test cannot run: {reason}", pytrace=False)
    pytest.skip(f"Docker image tests SKIPPED: {reason}")


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; with ``check``, fail the test with its output when it fails."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """A Docker engine that answers (engine.sh installs and starts one if needed); its version.

    A daemon this fixture started is stopped at the end of the session (its images stay on
    disk, the next build's cache); one that was already running is left alone.
    """
    try:
        result = subprocess.run(
            ["bash", str(SCRIPTS / "engine.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        unavailable("scripts/docker/engine.sh did not finish within 600 s")
    if result.returncode != 0:
        unavailable(
            f"scripts/docker/engine.sh could not provide a Docker engine "
            f"(exit {result.returncode}):\n{tail(result.stdout + result.stderr, 20)}"
        )
    started = int(result.stdout) if result.stdout.strip() else None
    try:
        yield docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    finally:
        if started is not None:
            stop_daemon(started)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_daemon(pid: int, timeout_s: float = 60.0) -> None:
    """SIGTERM the dockerd that engine.sh started, and wait until it (and its containerd) left."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    REPORT.append(f"stopped the dockerd (pid {pid}) this session started")


@dataclass(frozen=True)
class Built:
    """The image the test built and how long the build took."""

    tag: str
    build_s: float
    size_bytes: int


@pytest.fixture(scope="session")
def image(docker_engine: str) -> Built:
    """The image built from the working tree by scripts/docker/build_image.sh (cached steps)."""
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with BUILD_LOG.open("w") as log:
        try:
            result = subprocess.run(
                ["bash", str(SCRIPTS / "build_image.sh")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SURETY_IMAGE": IMAGE},
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the image build took over {BUILD_TIMEOUT_S} s (log: {BUILD_LOG})")
    build_s = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(
            f"scripts/docker/build_image.sh failed (exit {result.returncode}); "
            f"log: {BUILD_LOG}\n{tail(BUILD_LOG.read_text())}",
            pytrace=False,
        )
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    REPORT.append(
        f"image {IMAGE}: {size / 1e6:.0f} MB, built in {build_s:.0f} s "
        f"(engine {docker_engine}; log {BUILD_LOG.relative_to(ROOT)})"
    )
    return Built(IMAGE, build_s, size)


@dataclass(frozen=True)
class Container:
    """A running container of the image, serving on ``url``."""

    name: str
    port: int
    url: str
    #: `docker create`: with the vfs storage driver this engine uses, a full copy of the image's
    #: files (seconds, and more when the disk is busy); other drivers take well under a second.
    create_s: float
    #: `docker start` to ready: the container's start and the server's own cold start (imports,
    #: every model loaded and warmed up).
    start_to_ready_s: float


def logs(name: str) -> str:
    result = docker("logs", name, check=False)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def container(image: Built) -> Iterator[Container]:
    """The image run as users run it (host network here: the engine has no bridge), on a free
    loopback port; removed afterwards whatever the tests did to it."""
    name = f"surety-test-{uuid.uuid4().hex[:8]}"
    port = kit.free_port()
    url = f"http://127.0.0.1:{port}"
    created = time.monotonic()
    docker(
        "create", "--name", name, "--network", "host",
        # Loopback only: the image's 0.0.0.0 would expose the test server beyond this machine.
        "--env", "SURETY_HOST=127.0.0.1", "--env", f"SURETY_PORT={port}",
        image.tag,
        timeout=300,
    )  # fmt: skip
    try:
        started = time.monotonic()
        docker("start", name)
        container = Container(
            name=name,
            port=port,
            url=url,
            create_s=started - created,
            start_to_ready_s=wait_ready(name, url, started),
        )
        REPORT.append(
            f"cold start: {container.start_to_ready_s:.2f} s from `docker start` to ready "
            f"(`docker create` before it: {container.create_s:.2f} s)"
        )
        yield container
    finally:
        docker("rm", "--force", "--volumes", name, check=False)


def wait_ready(name: str, url: str, started: float) -> float:
    """Seconds from ``started`` until readiness answers 200; fail with the container's log if it
    stops first or is not ready within READY_TIMEOUT_S of ``started``."""
    checked, running = 0.0, True

    def alive() -> bool:  # asks the engine at most once a second
        nonlocal checked, running
        if time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            state = docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            running = state == "running"
        return running

    left = READY_TIMEOUT_S - (time.monotonic() - started)
    try:
        kit.wait_ready(url, alive, timeout=left, log=lambda: logs(name))
    except kit.NotReadyError as error:
        pytest.fail(f"{name}: {error}", pytrace=False)
    return time.monotonic() - started
