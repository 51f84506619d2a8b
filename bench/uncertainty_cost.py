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
from serving import Figures, load, server

from surety_kit.payloads import digit_images, digits_tensor, oip_body, text_tensor
from surety_kit.server import LOOPBACK
from surety_kit.wire import Endpoint, http_request


def payloads(model: str, endpoint: str, bodies: list[bytes]) -> list[bytes]:
    """Raw HTTP/1.1 requests for the given JSON bodies."""
    to = Endpoint(LOOPBACK, 80)  # the Host header only: the connection is the caller's
    return [http_request(to, "POST", f"/v2/models/{model}/{endpoint}", body) for body in bodies]


def digits_bodies() -> list[bytes]:
    return [oip_body(digits_tensor(image)) for image in digit_images()[:64]]


def fortune_bodies(entry: Path) -> list[bytes]:
    meta = json.loads((entry / "export.json").read_text())
    lines = Path(meta["data"]["splits"]["test"]).read_text().splitlines()[:64]
    texts = [json.loads(line)["text"] for line in lines]
    return [oip_body(text_tensor([text])) for text in texts]


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
