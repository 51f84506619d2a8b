"""Serving inside the container against the bare process: the same load, side by side.

The image (``make image``, tag ``surety:latest``) runs with ``--network host``, so both servers
answer on loopback and differ only in the container. Rounds alternate bare / container, each a
fresh server on the same model repository (the image's own copy for the container, the host's
``model_repository`` for the bare process, built by the same ``surety build-defaults``):

1. batch-1 JSON digits ``infer``, one keep-alive client: p50/p99;
2. 32 concurrent clients: requests/s, p50/p99;
3. cold start: ``docker run`` to ``/v2/health/ready`` answering 200.

    .venv/bin/python bench/container.py [--image surety:latest] [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving import Figures, load, requests, server

from surety_kit.server import LOOPBACK, free_port, wait_ready


@contextmanager
def container(image: str) -> Iterator[tuple[int, float]]:
    """A container of ``image`` on a free loopback port: (port, seconds from run to ready)."""
    port = free_port()
    started = time.monotonic()
    name = subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", "host", "-e", f"SURETY_PORT={port}",
         "-e", "SURETY_LOG_LEVEL=warning", image],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    try:
        wait_ready(f"http://{LOOPBACK}:{port}", timeout=90)
        yield port, time.monotonic() - started
    finally:
        subprocess.run(["docker", "stop", "-t", "30", name], check=False, capture_output=True)


@contextmanager
def served(kind: str, image: str, repository: Path) -> Iterator[tuple[int, float | None]]:
    """The bare process (port, None) or the container (port, seconds from run to ready)."""
    if kind == "bare":
        with server(repository, batching=True) as port:
            yield port, None
    else:
        with container(image) as started:
            yield started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="surety:latest")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()

    single: dict[str, list[Figures]] = {"bare": [], "container": []}
    many: dict[str, list[Figures]] = {"bare": [], "container": []}
    cold: list[float] = []
    for _ in range(args.rounds):
        for kind in ("bare", "container"):
            with served(kind, args.image, args.model_repository) as (port, ready_s):
                if ready_s is not None:
                    cold.append(ready_s)
                payloads = requests(port)
                single[kind].append(load(port, payloads, 1, args.seconds / 2))
                many[kind].append(load(port, payloads, args.clients, args.seconds))

    print(
        f"\n| {'':10} | 1 client p50 ms | p99 ms | {args.clients} clients req/s | p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|")
    rps = {}
    p50 = {}
    for kind in ("bare", "container"):
        one = single[kind]
        lot = many[kind]
        p50[kind] = statistics.median(f.pct(50) for f in one)
        rps[kind] = statistics.median(f.rps for f in lot)
        print(f"| {kind} | {p50[kind]:.3f} | {statistics.median(f.pct(99) for f in one):.3f} "
              f"| {rps[kind]:.0f} | {statistics.median(f.pct(50) for f in lot):.2f} "
              f"| {statistics.median(f.pct(99) for f in lot):.2f} |")  # fmt: skip
    print(f"\ncontainer / bare: 1-client p50 {p50['container'] / p50['bare']:.3f}, "
          f"throughput {rps['container'] / rps['bare']:.3f} (target: within 10%)")  # fmt: skip
    print(f"container cold start to ready: {', '.join(f'{s:.2f} s' for s in cold)} (target < 10 s)")


if __name__ == "__main__":
    main()
