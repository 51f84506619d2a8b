"""`surety serve --workers 2`, a real process group: both workers serve, /metrics counts every
request once across them, and SIGTERM drains the group to exit 0 in time."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from surety_kit.metrics import scrape
from surety_kit.payloads import image_request
from surety_kit.server import free_port, serve
from surety_serving import settings as settings_module
from surety_serving.cli import parser
from surety_serving.metrics import cpu_seconds
from surety_serving.settings import Settings

pytestmark = pytest.mark.model

WORKERS = 2
REQUESTS = 300
CLIENTS = 12
DRAIN_S = 1.0
SHUTDOWN_TIMEOUT_S = 8.0


def worker_pids(pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@pytest.mark.slow
def test_two_workers_share_the_load_count_it_once_and_exit_0(repository, images, tmp_path):
    env = {
        "SURETY_DRAIN_S": str(DRAIN_S),
        "SURETY_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "PROMETHEUS_MULTIPROC_DIR": None,
    }
    log_path = tmp_path / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Ready once every worker has loaded the models: each answers readiness on its own.
    model_ready = ("surety_model_ready", (("model", "digits"), ("version", "1")))
    with serve(
        repository,
        *("--workers", str(WORKERS)),
        port=port,
        env=env,
        log=log_path,
        timeout=90,
        also=lambda: bool(scrape(url).get(model_ready)),
        stop_signal=signal.SIGKILL,  # only if the test failed before it stopped the server
    ) as served:
        server = served.process
        workers = worker_pids(server.pid)
        assert len(workers) == WORKERS
        time.sleep(0.5)  # both have started listening (the second may have loaded later)
        cpu_before = {pid: cpu_seconds(pid) for pid in workers}

        body = image_request(images[:8])

        def post(_: int) -> int:
            # A connection per request, so that the kernel hands them to either worker.
            return httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=30).status_code

        with ThreadPoolExecutor(CLIENTS) as pool:
            statuses = list(pool.map(post, range(REQUESTS)))
        assert set(statuses) == {200}
        cpu_used = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in workers}

        samples = scrape(url)
        labels = (("code", "200"), ("endpoint", "infer"), ("model", "digits"))
        assert samples[("surety_requests_total", labels)] == REQUESTS
        inferred = (("endpoint", "infer"), ("model", "digits"))
        assert samples[("surety_request_duration_seconds_count", inferred)] == REQUESTS
        assert samples[("surety_inflight_requests", (("model", "digits"),))] == 0
        assert samples[("process_cpu_seconds_total", ())] > 0
        # Both workers served: each spent real CPU on the load (an idle one spends ~none).
        print(f"worker CPU during the load: {cpu_used}")
        total = sum(cpu_used.values())
        assert all(used > 0.1 * total for used in cpu_used.values()), cpu_used

        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(DRAIN_S / 2)
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 503  # draining
        exit_code = server.wait(timeout=SHUTDOWN_TIMEOUT_S + 5)
        stopped_after = time.monotonic() - signalled

    assert exit_code == 0, log_path.read_text()
    assert DRAIN_S <= stopped_after < SHUTDOWN_TIMEOUT_S + 2
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    print(f"group exited 0 {stopped_after:.1f} s after SIGTERM")


def test_workers_setting_splits_the_cores(monkeypatch):
    monkeypatch.setattr(settings_module, "available_cores", lambda: 8)
    for name in ("SURETY_WORKERS", "SURETY_INFERENCE_WORKERS", "SURETY_INTRA_OP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert parser().parse_args(["serve", "--workers", "3"]).workers == 3
    assert Settings().processes == 1
    assert Settings().workers() == 8
    monkeypatch.setenv("SURETY_WORKERS", "2")
    assert Settings().processes == 2
    assert Settings().workers() == 4  # 2 processes x 4 inference threads = 8 cores
    assert Settings(intra_op_threads=2).workers() == 2
    assert Settings(processes=8).workers() == 1
