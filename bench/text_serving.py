"""Text serving benchmark: fortune-topics `/score` latency, throughput, and where the time goes.

Measured side by side in one run (the machine is shared: read medians and ratios):

1. In-process, on the same test texts, with the server's own code: the text decoder
   (tokenization, padding) and ``session.run`` (ORT, the server's session options), timed
   separately at batch 1 and at batch 32: the share of tokenization in the model time.
2. Over HTTP (a ``surety serve`` process): batch-1 JSON ``/score`` p50/p99 with one client, and
   the served accuracy over the whole test split (against export.json's offline figure).
3. 32 concurrent clients sending batch-1 ``/score`` requests, with length grouping
   (``batching.max_length_ratio`` 2, the default) and without it (ratio 1000: any lengths
   merge), rounds interleaved: req/s, p50/p99, server CPU per request, rows per ORT run.

    .venv/bin/python bench/text_serving.py [--model-repository model_repository] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import yaml
from serving import Figures, load, measured, server

from surety_kit.payloads import oip_body, text_tensor
from surety_kit.server import LOOPBACK
from surety_kit.wire import Endpoint, http_request
from surety_serving.protocol.types import Tensor
from surety_serving.runtime.config import load_config
from surety_serving.runtime.decoders import TextDecoder, build_decoders
from surety_serving.runtime.session import OnnxSession

MODEL = "fortune-topics"
PATH = f"/v2/models/{MODEL}/score"
OUTPUTS = ["predicted_label"]


def test_split(entry: Path) -> tuple[list[str], list[str], float]:
    """Texts, labels and the offline test accuracy recorded by the export."""
    metadata = json.loads((entry / "export.json").read_text())
    path = Path(metadata["training"]["test_file"])
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in records]
    return texts, [r["label"] for r in records], float(metadata["metrics"]["test_accuracy"])


def in_process(entry: Path, texts: list[str], batch: int, runs: int) -> tuple[float, float]:
    """Median seconds of tokenization and of session.run per call, interleaved, at ``batch``."""
    version = max(int(p.name) for p in entry.iterdir() if p.name.isdigit())
    config = load_config(entry / "config.yaml")
    (decoder,) = build_decoders(config, entry / str(version)).values()
    assert isinstance(decoder, TextDecoder)
    session = OnnxSession(entry / str(version) / "model.onnx", config)
    rng = np.random.default_rng(0)
    tokenize, infer = [], []
    for i in range(runs):
        chosen = [texts[j] for j in rng.choice(len(texts), batch, replace=False)]
        tensor = Tensor("text", "BYTES", np.array([t.encode() for t in chosen], dtype=object))
        started = time.perf_counter()
        feeds = decoder(tensor).feeds
        tokenized = time.perf_counter()
        feeds["scale"] = np.ones((batch, 1), dtype=np.float32)
        session.run(feeds)
        if i >= runs // 10:  # the first runs warm the arena
            tokenize.append(tokenized - started)
            infer.append(time.perf_counter() - tokenized)
    return statistics.median(tokenize), statistics.median(infer)


def payloads(texts: list[str], port: int) -> list[bytes]:
    """Pre-built HTTP requests: batch-1 JSON /score of real test texts."""
    endpoint = Endpoint(LOOPBACK, port)
    return [
        http_request(endpoint, "POST", PATH, oip_body(text_tensor([text]), outputs=OUTPUTS))
        for text in texts
    ]


def served_accuracy(port: int, texts: list[str], labels: list[str]) -> float:
    """Accuracy of the served predictions over the split, in requests of 32 texts."""
    predicted: list[str] = []
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        body = oip_body(text_tensor(chunk), outputs=OUTPUTS)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{PATH}", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as response:
            predicted += orjson.loads(response.read())["outputs"][0]["data"]
    return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))


def with_ratio(repository: Path, ratio: float, work: Path) -> Path:
    """A copy of the repository holding fortune-topics with ``max_length_ratio`` set."""
    root = work / f"ratio-{ratio:g}"
    if not root.exists():
        root.mkdir()
        (root / MODEL).mkdir()
        for item in (repository / MODEL).iterdir():
            target = root / MODEL / item.name
            if item.name != "config.yaml":
                target.symlink_to(item.resolve())
        config = yaml.safe_load((repository / MODEL / "config.yaml").read_text())
        config.setdefault("batching", {})["max_length_ratio"] = ratio
        (root / MODEL / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def main() -> None:
    """Run the three measurements and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--runs", type=int, default=300, help="in-process runs at batch 1")
    args = parser.parse_args()

    entry = args.model_repository / MODEL
    if not (entry / "config.yaml").is_file():
        raise SystemExit(f"{entry} is missing: build it with `surety build-defaults`")
    texts, labels, offline_accuracy = test_split(entry)
    print(f"cores {os.cpu_count()}, {len(texts)} test texts, intra-op threads 1")

    print("\n== in-process, same texts: tokenization (text decoder) vs session.run ==")
    print(f"{'':10}{'tokenize ms':>13}{'ORT ms':>10}{'tokenize share':>16}")
    for batch, runs in ((1, args.runs), (32, max(args.runs // 30, 10))):
        tokenize, infer = in_process(entry, texts, batch, runs)
        share = tokenize / (tokenize + infer)
        print(f"{f'batch {batch}':10}{tokenize * 1e3:13.3f}{infer * 1e3:10.3f}{share:15.1%}")

    with server(args.model_repository, batching=True) as port:
        accuracy = served_accuracy(port, texts, labels)
        built = payloads(texts, port)
        serial = [load(port, built, 1, args.seconds / 2) for _ in range(args.rounds)]
    http = min(serial, key=lambda f: f.pct(50))
    print("\n== batch-1 /score over HTTP (ms), one client ==")
    print(f"p50 {http.pct(50):.2f}   p99 {http.pct(99):.2f}   ({len(http.latencies)} requests)")
    print(f"served test accuracy {accuracy:.4f}; offline (export.json) {offline_accuracy:.4f}")

    results: dict[float, list[Figures]] = {2.0: [], 1000.0: []}
    with tempfile.TemporaryDirectory(prefix="surety-text-bench-") as work:
        for _ in range(args.rounds):
            for ratio in results:
                with server(with_ratio(args.model_repository, ratio, Path(work)), True) as port:
                    built = payloads(texts, port)
                    results[ratio].append(measured(port, built, args.clients, args.seconds))
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n== {args.clients} concurrent clients, batch-1 /score, {args.rounds} rounds ==")
    print(f"{'':26}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'rows/run':>10}"
          "   rounds req/s")  # fmt: skip
    rps = {}
    for ratio, rounds in results.items():
        rps[ratio] = statistics.median(f.rps for f in rounds)
        p50 = statistics.median(f.pct(50) for f in rounds)
        p99 = statistics.median(f.pct(99) for f in rounds)
        cpu = statistics.median(f.cpu_ms_per_request for f in rounds)
        rows = statistics.median(f.mean_batch for f in rounds)
        each = " ".join(f"{f.rps:.0f}" for f in rounds)
        label = "grouped (ratio 2)" if ratio == 2.0 else "any lengths (ratio 1000)"
        print(f"{label:26}{rps[ratio]:8.0f}{p50:9.1f}{p99:9.1f}{cpu:12.2f}{rows:10.1f}   {each}")
    print(f"throughput grouped / ungrouped: {rps[2.0] / rps[1000.0]:.2f}x")


if __name__ == "__main__":
    main()
