"""Serving benchmark: the HTTP overhead of a batch-1 infer, and what dynamic batching buys.

Measured side by side in one run (the machine is shared: read medians and ratios):

1. p50/p99 of a direct ``session.run`` of the digits model at batch 1 (same session options as
   the server) against p50/p99 of a batch-1 JSON ``infer`` over HTTP (one keep-alive client):
   the difference of the p50s is the serving overhead.
2. Requests/s and p50/p99 latency at 32 concurrent clients, batching on vs off
   (``SURETY_BATCHING``), each in its own ``surety serve`` process, rounds interleaved; with the
   server's CPU time per request and rows per ORT run read from its /metrics.

The load generator is a minimal asyncio HTTP/1.1 client with pre-built requests, so that as
little of the two shared cores as possible goes to the client.

    .venv/bin/python bench/serving.py [--model-repository model_repository] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from sklearn.datasets import load_digits

from surety_serving.runtime.config import load_config
from surety_serving.runtime.session import OnnxSession
from surety_serving.settings import Settings

MODEL = "digits"
PATH = f"/v2/models/{MODEL}/infer"


@dataclass
class Figures:
    """Latencies (seconds) and throughput of one measurement, plus the server's own view."""

    latencies: list[float]
    seconds: float
    server_cpu_s: float = 0.0
    batch_rows: float = 0.0
    batch_runs: float = 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """Server process CPU time (all threads) per completed request, in ms."""
        return self.server_cpu_s / len(self.latencies) * 1e3

    @property
    def mean_batch(self) -> float:
        """Average rows per ORT run."""
        return self.batch_rows / self.batch_runs if self.batch_runs else 0.0

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        """The q-th percentile latency in milliseconds."""
        return float(np.percentile(self.latencies, q) * 1e3)


def requests(images: np.ndarray, host: str) -> list[bytes]:
    """Pre-built HTTP requests: batch-1 JSON infers of real digits."""
    built = []
    for image in images[:64]:
        tensor = {"name": "image", "shape": [1, 64], "datatype": "FP32", "data": image}
        body = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        built.append(head.encode() + body)
    return built


async def client(port: int, payloads: list[bytes], stop_at: float, out: list[float]) -> None:
    """One keep-alive connection sending requests back to back until ``stop_at``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = 0
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        writer.write(payloads[index % len(payloads)])
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        out.append(time.perf_counter() - started)
        index += 1
    writer.close()


def load(port: int, payloads: list[bytes], clients: int, seconds: float) -> Figures:
    """Run ``clients`` closed-loop clients for ``seconds`` (after a 1 s warm-up)."""

    async def main() -> Figures:
        warm: list[float] = []
        stop = time.perf_counter() + 1.0
        await asyncio.gather(*(client(port, payloads, stop, warm) for _ in range(clients)))
        out: list[float] = []
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(*(client(port, payloads, stop, out) for _ in range(clients)))
        return Figures(out, time.perf_counter() - started)

    return asyncio.run(main())


def server_counters(port: int) -> tuple[float, float, float]:
    """Process CPU seconds, batched rows and ORT runs, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    values = dict.fromkeys(("process_cpu_seconds_total", "surety_batch_size_sum",
                            "surety_batch_size_count"), 0.0)  # fmt: skip
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        # The repository may hold other models: batch figures are the benchmarked model's.
        if name in values and (name.startswith("process") or f'model="{MODEL}"' in line):
            values[name] = float(line.rsplit(" ", 1)[1])
    return (values["process_cpu_seconds_total"], values["surety_batch_size_sum"],
            values["surety_batch_size_count"])  # fmt: skip


def measured(port: int, payloads: list[bytes], clients: int, seconds: float) -> Figures:
    """``load`` with the server's CPU time and batch sizes over the same interval."""
    cpu0, rows0, runs0 = server_counters(port)
    figures = load(port, payloads, clients, seconds)
    cpu1, rows1, runs1 = server_counters(port)
    figures.server_cpu_s, figures.batch_rows, figures.batch_runs = (
        cpu1 - cpu0,
        rows1 - rows0,
        runs1 - runs0,
    )
    return figures


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    port: int,
    process: subprocess.Popen[bytes] | None = None,
    path: str = "/v2/health/ready",
    timeout: float = 90.0,
) -> float:
    """Poll ``path`` on loopback until it answers 200; seconds waited. RuntimeError when
    ``timeout`` passes or ``process`` (the server, when the caller holds it) exits first."""
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout or (process and process.poll() is not None):
            raise RuntimeError(f"no ready server on port {port} after {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def server(repository: Path, batching: bool) -> Iterator[int]:
    """A `surety serve` process; yields its port once ready."""
    port = free_port()
    env = {**os.environ, "SURETY_BATCHING": str(batching).lower(), "SURETY_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "surety_serving.cli", "serve", "--port", str(port),
               "--model-repository", str(repository)]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    try:
        wait_ready(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def direct_latency(repository: Path, images: np.ndarray, runs: int) -> Figures:
    """Batch-1 ``session.run`` of the same model with the server's session options."""
    entry = repository / MODEL
    versions = sorted(int(p.name) for p in entry.iterdir() if p.name.isdigit())
    config = load_config(entry / "config.yaml")
    session = OnnxSession(entry / str(versions[-1]) / "model.onnx", config)
    scale = np.ones((1, 1), dtype=np.float32)
    out = []
    started = time.perf_counter()
    for i in range(runs):
        feeds = {"image": images[i % 64 : i % 64 + 1], "scale": scale}
        t = time.perf_counter()
        session.run(feeds)
        out.append(time.perf_counter() - t)
    return Figures(out[runs // 10 :], time.perf_counter() - started)


def repository_path(given: Path | None) -> Path:
    """The given repository, or the digits model built into a temporary one."""
    if given is not None:
        return given
    from surety_serving.models import digits

    root = Path(tempfile.mkdtemp(prefix="surety-bench-"))
    digits.build(root / MODEL, progress=False)
    return root


def main() -> None:
    """Run both measurements and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=3000)
    args = parser.parse_args()

    repository = repository_path(args.model_repository)
    images = load_digits().data.astype(np.float32)
    workers = Settings().workers()
    print(f"cores {os.cpu_count()}, inference workers {workers}, intra-op threads 1")

    direct = direct_latency(repository, images, args.latency_requests)
    with server(repository, batching=True) as port:
        payloads = requests(images, f"127.0.0.1:{port}")
        serial = [load(port, payloads, 1, args.seconds / 2) for _ in range(args.rounds)]
    http = min(serial, key=lambda f: f.pct(50))
    print("\n== batch-1 latency (ms), one client ==")
    print(f"{'':24}{'p50':>8}{'p99':>8}")
    print(f"{'session.run (direct)':24}{direct.pct(50):8.3f}{direct.pct(99):8.3f}")
    print(f"{'HTTP infer (JSON)':24}{http.pct(50):8.3f}{http.pct(99):8.3f}")
    print(f"serving overhead p50: {http.pct(50) - direct.pct(50):.3f} ms (target <= 0.5 ms)")

    results: dict[bool, list[Figures]] = {True: [], False: []}
    for _ in range(args.rounds):
        for batching in (False, True):
            with server(repository, batching) as port:
                payloads = requests(images, f"127.0.0.1:{port}")
                results[batching].append(measured(port, payloads, args.clients, args.seconds))

    print(f"\n== {args.clients} concurrent clients, batch-1 infers, {args.rounds} rounds ==")
    print(f"{'':16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'rows/run':>10}"
          "   rounds req/s")  # fmt: skip
    summary = {}
    for batching in (False, True):
        rounds = results[batching]
        rps = statistics.median(f.rps for f in rounds)
        p50 = statistics.median(f.pct(50) for f in rounds)
        p99 = statistics.median(f.pct(99) for f in rounds)
        summary[batching] = (rps, p99)
        each = " ".join(f"{f.rps:.0f}" for f in rounds)
        label = "batching on" if batching else "batching off"
        cpu = statistics.median(f.cpu_ms_per_request for f in rounds)
        rows = statistics.median(f.mean_batch for f in rounds)
        print(f"{label:16}{rps:10.0f}{p50:9.2f}{p99:9.2f}{cpu:12.3f}{rows:10.1f}   {each}")
    speedup = summary[True][0] / summary[False][0]
    print(f"throughput ratio on/off: {speedup:.2f}x (target >= 2x)")
    print(f"p99 on / p99 off: {summary[True][1] / summary[False][1]:.2f} (target <= 2)")
    print(f"p99 on / batch-1 p99 (one client): {summary[True][1] / http.pct(99):.1f}")


if __name__ == "__main__":
    main()
