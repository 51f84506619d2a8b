"""Server CPU per request, by kind: a digits answer, a refusal, a 404, against a health check.

Sequential requests on one keep-alive connection to a ``surety serve`` subprocess; the server's
CPU time (user + system, all threads) from ``/proc/<pid>/stat`` before and after each batch of
requests, divided by their number. Ratios to the health check, measured in the same run, are the
figures to quote: the machine is shared.

    .venv/bin/python bench/request_cost.py --model-repository model_repository
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import numpy as np

from surety_kit.payloads import digits_tensor, oip_body
from surety_kit.server import serve
from surety_kit.wire import http_request

HEALTH = "health check"


def exchange(sock: socket.socket, raw: bytes) -> int:
    """Send one request and read its whole answer; its status."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(v) for k, _, v in (x.partition(b":") for x in lines) if k.lower() == b"content-length"
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    """Measure each kind and print µs of server CPU per request and the ratio to health."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=3000, help="per kind")
    args = parser.parse_args()
    body = oip_body(digits_tensor(np.zeros(64, np.float32)))
    with serve(args.model_repository, timeout=180) as server:
        at, score = server.endpoint, "/v2/models/digits/score"
        kinds = {
            HEALTH: http_request(at, "GET", "/v2/health/live"),
            "digits /score (200)": http_request(at, "POST", score, body),
            "refused in the middleware (504)": http_request(
                at, "POST", score, body, {"Request-Timeout": "1e-9"}
            ),
            "unknown model (404)": http_request(at, "POST", "/v2/models/nope/score", body),
        }
        pid = server.pid
        sock = socket.create_connection((server.endpoint.host, server.endpoint.port))
        costs = {}
        for name, raw in kinds.items():
            for _ in range(200):  # warm-up
                status = exchange(sock, raw)
            before = cpu_seconds(pid)
            for _ in range(args.requests):
                exchange(sock, raw)
            costs[name] = (cpu_seconds(pid) - before) / args.requests, status
        sock.close()
    print(f"{'request':34} {'status':>6} {'server CPU µs':>14} {'× health':>9}")
    for name, (cost, status) in costs.items():
        print(f"{name:34} {status:6d} {cost * 1e6:14.0f} {cost / costs[HEALTH][0]:9.2f}")


if __name__ == "__main__":
    main()
