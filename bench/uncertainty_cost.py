"""What `/uncertainty` costs over `/score`: batch-1 latency and throughput at 32 clients.

One `surety serve` process (batching on); the two endpoints are measured in interleaved rounds
with the same pre-built batch-1 requests (real digits; fortune cookies for fortune-topics), so
the machine's noise hits both alike. Targets: `/uncertainty` p50 ≤ 1.5× `/score` p50 at batch 1,
and ≥ 0.75× its requests/s at 32 clients.

    .venv/bin/python bench/uncertainty_cost.py --model-repository model_repository
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import orjson
from serving import Figures, load, server
from sklearn.datasets import load_digits


def payloads(model: str, endpoint: str, bodies: list[bytes]) -> list[bytes]:
    """Raw HTTP/1.1 requests for the given JSON bodies."""
    path = f"/v2/models/{model}/{endpoint}"
    return [
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]


def digits_bodies() -> list[bytes]:
    images = load_digits().data.astype(np.float32)[:64]
    return [
        orjson.dumps(
            {"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": image}]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        for image in images
    ]


def fortune_bodies(entry: Path) -> list[bytes]:
    meta = json.loads((entry / "export.json").read_text())
    lines = Path(meta["data"]["splits"]["test"]).read_text().splitlines()[:64]
    texts = [json.loads(line)["text"] for line in lines]
    tensors = [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]} for t in texts]
    return [orjson.dumps({"inputs": [tensor]}) for tensor in tensors]


def percentile(figures: Figures, q: float) -> float:
    return float(np.percentile(figures.latencies, q)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = {"digits": digits_bodies}
    if (args.model_repository / "fortune-topics" / "export.json").is_file():
        models["fortune-topics"] = lambda: fortune_bodies(args.model_repository / "fortune-topics")
    with server(args.model_repository, batching=True) as port:
        print("| model | clients | endpoint | p50 ms | p99 ms | requests/s |")
        print("|---|---|---|---|---|---|")
        for model, bodies_of in models.items():
            bodies = bodies_of()
            requests = {e: payloads(model, e, bodies) for e in ("score", "uncertainty")}
            for clients in (1, 32):
                results: dict[str, list[Figures]] = {"score": [], "uncertainty": []}
                for _ in range(args.rounds):
                    for endpoint, built in requests.items():
                        results[endpoint].append(load(port, built, clients, args.seconds))
                summary = {}
                for endpoint, rounds in results.items():
                    merged = Figures(
                        [x for r in rounds for x in r.latencies], sum(r.seconds for r in rounds)
                    )
                    rate = statistics.median(len(r.latencies) / r.seconds for r in rounds)
                    summary[endpoint] = (percentile(merged, 50), percentile(merged, 99), rate)
                    p50, p99, _ = summary[endpoint]
                    cells = f"{p50:.2f} | {p99:.2f} | {rate:.0f}"
                    print(f"| {model} | {clients} | /{endpoint} | {cells} |")
                ratios = [
                    u / s for u, s in zip(summary["uncertainty"], summary["score"], strict=True)
                ]
                cells = " | ".join(f"{r:.2f}×" for r in ratios)
                print(f"| {model} | {clients} | uncertainty / score | {cells} |")


if __name__ == "__main__":
    main()
