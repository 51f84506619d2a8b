"""End to end: models whose attention `surety optimize` rewrote into ai.surety::SparseAttention.

Two measurements, side by side in one run (the machine is shared: read medians and ratios):

1. **fortune-topics** (MiniLM fine-tuned, texts cut at 128 tokens), rewritten at several
   patterns, densities and estimators: test accuracy over the whole test split, the drift of
   the logits from the original on the pass's sample inputs, batch-1 ``session.run`` time over
   real test texts (in-process, one thread, interleaved across variants), and ``/score``
   p50 over HTTP (a ``surety serve`` process per variant, one client). Plus the ORT profile of
   the dense rewrite: the share of the run spent in the SparseAttention nodes, which bounds
   what any attention speed-up can give at these lengths.
2. **Long inputs**, where attention dominates: a MiniLM-shaped encoder (6 layers, 384 wide,
   12 heads) with random weights and 8,192 positions, exported with the same dynamo exporter,
   timed at batch 1 on one thread at several sequence lengths, original against rewrites.
   Random weights: latency only, no accuracy.

    .venv/bin/python bench/attention_end_to_end.py [--model-repository model_repository]
        [--requests 200] [--lengths 512 2048 4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from serving import server

from surety_kit.payloads import oip_body, text_tensor
from surety_serving import kernels
from surety_serving.kernels.reference import ESTIMATORS
from surety_serving.optimize.options import OptimizeOptions, SparseOptions
from surety_serving.optimize.pipeline import optimize
from surety_serving.protocol.types import Tensor
from surety_serving.runtime.decoders import TextDecoder
from surety_serving.uncertainty.features import OfflineModel, feature_set

MODEL = "fortune-topics"
UNBOUNDED = float("inf")  # the rewrites are measured here, not vouched for


@dataclass(frozen=True)
class Variant:
    label: str
    options: OptimizeOptions | None  # None: the model as exported


def sparse(estimator: str, **pattern: object) -> OptimizeOptions:
    return OptimizeOptions(
        attention="sparse",
        sparse=SparseOptions(estimator=estimator, **pattern),  # type: ignore[arg-type]
        tolerance=UNBOUNDED,
    )


def fortune_variants() -> list[Variant]:
    """Chosen before measuring: the dense rewrite, bands of 32 / 16 / 8 tokens (test texts have
    a median of 28 tokens, 128 at most) and 16-token blocks, each with every estimator (sampled
    every 8th query). Windows are fixed in tokens, not a density, so that a text's result does
    not depend on the padded length of the batch it is served in."""
    variants = [
        Variant("original (ORT Softmax)", None),
        Variant("TwoPassSoftmax", OptimizeOptions()),
        Variant("SparseAttention dense", sparse("none")),
    ]
    patterns: list[tuple[str, dict[str, object]]] = [
        (f"band {w}", {"pattern": "band", "window": w}) for w in (32, 16, 8)
    ]
    patterns.append(
        ("blocks of 16 ±1, 1 global", {"pattern": "block_local_global", "block_size": 16,
                                        "num_local_blocks": 1, "num_global": 1}),
    )  # fmt: skip
    for name, pattern in patterns:
        for estimator in ESTIMATORS:
            stride = {"sample_stride": 8} if estimator == "sampled" else {}
            variants.append(Variant(f"{name}, {estimator}", sparse(estimator, **pattern, **stride)))
    return variants


@contextmanager
def variant_entry(entry: Path, version: int, model: onnx.ModelProto, work: Path) -> Iterator[Path]:
    """A repository holding a copy of the entry whose model.onnx is ``model`` (the rest linked)."""
    root = Path(tempfile.mkdtemp(dir=work))
    target = root / MODEL
    target.mkdir()
    for item in entry.iterdir():
        if item.name != str(version):
            (target / item.name).symlink_to(item.resolve())
    (target / str(version)).mkdir()
    for item in (entry / str(version)).iterdir():
        if item.name != "model.onnx":
            (target / str(version) / item.name).symlink_to(item.resolve())
    onnx.save(model, str(target / str(version) / "model.onnx"))
    yield root


def batch1_feeds(entry: Path, version: int, texts: list[str]) -> list[dict[str, np.ndarray]]:
    model = OfflineModel.load(entry, version)
    (decoder,) = model.decoders.values()
    assert isinstance(decoder, TextDecoder)
    feeds = []
    for text in texts:
        tensor = Tensor("text", "BYTES", np.array([text.encode()], dtype=object))
        batch = decoder(tensor).feeds
        batch["scale"] = np.ones((1, 1), dtype=np.float32)
        feeds.append(batch)
    return feeds


def session(path: Path, profile: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def attention_share(
    model: Path, feeds: list[dict[str, np.ndarray]], work: Path
) -> dict[str, float]:
    """Share of node time per op type over the feeds, from ORT's profile."""
    s = session(model, profile=str(work / "profile"))
    for feed in feeds:
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return {op: t / total for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])}


def score_p50(port: int, texts: list[str]) -> float:
    """Median seconds of batch-1 JSON /score requests, one client."""
    times = []
    for text in texts:
        body = oip_body(text_tensor([text]))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/{MODEL}/score",
            body,
            {"Content-Type": "application/json"},
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            response.read()
        times.append(time.perf_counter() - started)
    return statistics.median(times[len(times) // 10 :])


def fortune_section(repository: Path, requests: int, work: Path) -> None:
    entry = repository / MODEL
    version = max(int(p.name) for p in entry.iterdir() if p.name.isdigit())
    original = onnx.load(str(entry / str(version) / "model.onnx"))
    splits = json.loads((entry / "export.json").read_text())["data"]["splits"]
    test_path = Path(splits["test"])
    texts = [json.loads(line)["text"] for line in test_path.read_text().splitlines() if line]
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), requests, replace=False)]
    feeds = batch1_feeds(entry, version, sample)
    lengths = [f["input_ids"].shape[1] for f in feeds]
    print(f"\n## fortune-topics: {len(texts)} test texts; batch-1 timing on {requests} of them "
          f"(tokens: median {statistics.median(lengths):.0f}, max {max(lengths)})")  # fmt: skip

    rows = []
    sessions: dict[str, ort.InferenceSession] = {}
    paths: dict[str, Path] = {}
    for variant in fortune_variants():
        model, drift = original, 0.0
        if variant.options is not None:
            model, report = optimize(original, variant.options)
            drift = report.drift["logits"]
        with variant_entry(entry, version, model, work) as root:
            offline = OfflineModel.load(root / MODEL, version)
            test = feature_set(offline, test_path, features=())
            accuracy = float(np.mean(test.predictions == test.labels))
            with server(root, batching=True) as port:
                p50 = score_p50(port, sample)
            paths[variant.label] = root / MODEL / str(version) / "model.onnx"
            sessions[variant.label] = session(paths[variant.label])
        rows.append((variant.label, accuracy, drift, p50))
        print(f"  built {variant.label}: accuracy {accuracy:.4f}", flush=True)

    # session.run at batch 1, interleaved: every variant sees each text in the same round.
    runs: dict[str, list[float]] = defaultdict(list)
    for feed in feeds:
        for label, s in sessions.items():
            started = time.perf_counter()
            s.run(None, feed)
            runs[label].append(time.perf_counter() - started)
    base_run = statistics.median(runs[rows[0][0]])
    base_p50 = rows[0][3]
    print("\n| variant | test accuracy | max logit drift | session.run ms (ratio) | "
          "/score p50 ms (ratio) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for label, accuracy, drift, p50 in rows:
        run = statistics.median(runs[label])
        print(f"| {label} | {accuracy:.4f} | {drift:.2g} | {run * 1e3:.2f} ({run / base_run:.2f}) "
              f"| {p50 * 1e3:.2f} ({p50 / base_p50:.2f}) |")  # fmt: skip

    share = attention_share(paths["SparseAttention dense"], feeds, work)
    print("\nORT profile of the dense rewrite, batch 1 (share of node time per op type):")
    print(", ".join(f"{op} {value:.1%}" for op, value in list(share.items())[:8]))


def long_encoder(path: Path, positions: int) -> None:
    """A MiniLM-shaped BERT with random weights (seeded) and ``positions`` positions."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=positions,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model: Any = BertModel(config)
    model.eval()
    ids = torch.randint(0, 30522, (1, 64))
    mask = torch.ones_like(ids)
    sequence = torch.export.Dim("sequence", max=positions)
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask), str(path), dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state", "pooled"],
            dynamic_shapes={"input_ids": {1: sequence}, "attention_mask": {1: sequence}},
            opset_version=18, external_data=False, verbose=False,
        )  # fmt: skip


def long_section(lengths: list[int], work: Path) -> None:
    path = work / "long.onnx"
    long_encoder(path, max(lengths))
    original = onnx.load(str(path))
    rng = np.random.default_rng(0)
    samples = [
        {
            "input_ids": rng.integers(0, 30522, (1, 256)),
            "attention_mask": np.ones((1, 256), np.int64),
        }
    ]
    variants = [
        ("SparseAttention dense", sparse("none")),
        *[(f"band 3.1%, {e}", sparse(e, pattern="band", density=0.031)) for e in ESTIMATORS],
        ("band 12.5%, gaussian", sparse("gaussian", pattern="band", density=0.125)),
    ]
    models = {"original (ORT Softmax)": path}
    for label, options in variants:
        model, _ = optimize(original, options, samples=samples)
        models[label] = work / f"{len(models)}.onnx"
        onnx.save(model, str(models[label]))
    print("\n## Long inputs: MiniLM-shaped encoder, random weights, batch 1, one thread "
          "(median of 3 runs, ms; ratio to the original)")  # fmt: skip
    print("\n| S | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    sessions = {label: session(p) for label, p in models.items()}
    for length in lengths:
        feed = {"input_ids": rng.integers(0, 30522, (1, length)),
                "attention_mask": np.ones((1, length), np.int64)}  # fmt: skip
        times: dict[str, list[float]] = defaultdict(list)
        for s in sessions.values():
            s.run(None, feed)  # warm-up at this length
        for _ in range(3):
            for label, s in sessions.items():
                started = time.perf_counter()
                s.run(None, feed)
                times[label].append(time.perf_counter() - started)
        base = statistics.median(times["original (ORT Softmax)"])
        cells = [
            f"{statistics.median(t) * 1e3:.0f} ({statistics.median(t) / base:.2f})"
            for t in times.values()
        ]
        print(f"| {length} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=200, help="batch-1 texts timed per variant")
    parser.add_argument("--lengths", type=int, nargs="*", default=[512, 2048, 4096])
    parser.add_argument("--skip-fortune", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if not args.skip_fortune:
            fortune_section(args.model_repository, args.requests, Path(scratch))
        if args.lengths:
            long_section(args.lengths, Path(scratch))


if __name__ == "__main__":
    main()
