"""Helpers shared by the service tests: a real uvicorn server in a thread, request builders."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from surety_serving.runtime.session import OnnxSession
from surety_serving.server import build_server
from surety_serving.settings import Settings


def free_port() -> int:
    """A port free on 127.0.0.1 now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = 60.0,
    also: Callable[[], bool] | None = None,
) -> None:
    """Poll ``url``'s /v2/health/ready until 200 (and ``also()``, when given), failing with the
    server's log when ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            response = httpx.get(f"{url}/v2/health/ready", timeout=1)
            if response.status_code == 200 and (also is None or also()):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready in {timeout:.0f} s:\n{log_path.read_text()}"
        time.sleep(0.1)


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Send ``sig`` to a process still running, wait ``timeout`` for it, then kill it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """Serve ``create_app(settings)`` with uvicorn in a thread on a free port; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(settings.model_copy(update={"log_level": "warning"}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def run_direct(
    session: OnnxSession, images: np.ndarray, scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Outputs of a direct session run on ``images``."""
    return session.run(
        {"image": images, "scale": np.full((len(images), 1), scale, dtype=np.float32)}
    )


def image_request(images: np.ndarray, **extra: object) -> dict[str, Any]:
    """A JSON OIP request for the digits model."""
    return {
        "inputs": [
            {
                "name": "image",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ],
        **extra,
    }
