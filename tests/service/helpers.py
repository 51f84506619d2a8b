"""Helpers shared by the service tests: a real uvicorn server in a thread, request builders."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from service.runtime.session import OnnxSession
from service.server import build_server
from service.settings import Settings


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
