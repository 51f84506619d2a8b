"""Helpers of the service tests alone: a direct session run, a headless locust run. Servers,
ports, readiness and request bodies are the kit's (surety_kit.server, surety_kit.payloads),
shared with bench/ and load_tests/."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from surety_serving.runtime.session import OnnxSession


def run_direct(
    session: OnnxSession, images: np.ndarray, scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Outputs of a direct session run on ``images``."""
    return session.run(
        {"image": images, "scale": np.full((len(images), 1), scale, dtype=np.float32)}
    )


def run_locust(
    locustfile: Path, host: str, csv_prefix: Path, *options: str
) -> tuple[str, dict[str, dict[str, str]]]:
    """Locust headless in a child process (locust patches its process's standard library for
    gevent) against ``host``: its output, and its CSV statistics by request name. Fails the test
    with the output's tail when locust exits non-zero."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", str(locustfile), "--headless"),
            *("-H", host, "--only-summary", "--csv", str(csv_prefix), *options),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with csv_prefix.with_name(f"{csv_prefix.name}_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    return result.stdout, rows
