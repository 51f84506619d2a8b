"""Per-layer score-token logits of an exported judge over many prompts, computed once and cached.

Fitting layer weights needs ``layer_logits`` [N, L+1, K] of every labelled prompt, and they do
not depend on the weights (the ``ExpectedScore`` head comes after them), so they are computed
once per (exported graph, prompt rows) and kept in ``<entry>/fit-cache/``; refitting, or fitting
after the weights were replaced, reads them back. The key is the export's own record of the
graph (export.json: the model file's SHA-256 at export, the prompt, the score tokens, the lens)
and the rows' text, so a re-export or other rows never read stale logits.

Prompts run through ONNX Runtime in batches of similar length (sorted, left padded), the
encoding and truncation being the server's (surety_serving.judge.inputs), with every core.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from surety_serving.judge.inputs import JudgeInputs
from surety_serving.judge.prompt import encode_prompts
from surety_serving.runtime.config import CONFIG_FILE, load_config
from surety_serving.tasks.judge import JudgeConfig

log = logging.getLogger(__name__)

CACHE_DIR = "fit-cache"
EXPORT_RECORD = "export.json"
#: Prompts per ORT run: enough to share the per-run cost, few enough that padding stays short.
BATCH_SIZE = 8

Rows = Sequence[Mapping[str, str]]


def cache_key(entry: Path, rows: Rows) -> str:
    """What the logits depend on: the exported graph (as export.json records it) and the rows."""
    record = json.loads((entry / EXPORT_RECORD).read_text("utf-8"))
    digest = hashlib.sha256()
    graph = {key: record[key] for key in ("judge", "files", "source")}
    digest.update(json.dumps(graph, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps(dict(row), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:24]


def layer_logits(
    entry: Path,
    rows: Rows,
    *,
    version: int = 1,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """``layer_logits`` [N, L+1, K] of the judge at ``entry`` for ``rows``; cached."""
    cache = entry / CACHE_DIR / f"layer-logits-{cache_key(entry, rows)}.npy"
    if cache.is_file():
        cached: npt.NDArray[np.float32] = np.load(cache)
        log.info(f"{len(rows)} prompts: layer logits from {cache}")
        return cached
    logits = compute_layer_logits(entry, rows, version=version, threads=threads)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npy")
    np.save(partial, logits)
    partial.replace(cache)
    return logits


def compute_layer_logits(
    entry: Path,
    rows: Rows,
    *,
    version: int = 1,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Run the judge's graph up to ``layer_logits`` for every row (no cache)."""
    import onnxruntime as ort

    from surety_serving.runtime.session import session_options

    config = load_config(entry / CONFIG_FILE, JudgeConfig)
    spec = config.judge
    if spec is None:
        raise ValueError(f"{entry} is not a judge (task: {config.task})")
    folder = entry / str(version)
    inputs = JudgeInputs(spec, folder)
    session = ort.InferenceSession(
        str(folder / "model.onnx"),
        session_options(threads or os.cpu_count() or 1),
        providers=["CPUExecutionProvider"],
    )
    # Prompt lengths first, so that a batch holds prompts of about one length.
    lengths = [
        len(inputs.tokenizer.encode(inputs.template.render(row), add_special_tokens=False).ids)
        for row in rows
    ]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(rows), spec.num_layers + 1, len(spec.score_tokens)), np.float32)
    started = time.monotonic()
    for done, start in enumerate(range(0, len(rows), BATCH_SIZE)):
        chosen = order[start : start + BATCH_SIZE]
        batch = encode_prompts(
            inputs.tokenizer, inputs.template, [rows[i] for i in chosen],
            max_prompt_tokens=spec.max_prompt_tokens, truncate=spec.truncate,
            pad_token_id=spec.pad_token_id,
        )  # fmt: skip
        feeds = {spec.input_ids: batch.input_ids, spec.attention_mask: batch.attention_mask}
        (out[chosen],) = session.run([spec.layer_logits], feeds)
        finished = min(start + BATCH_SIZE, len(rows))
        if done % 10 == 0 or finished == len(rows):
            elapsed = time.monotonic() - started
            eta = elapsed / finished * (len(rows) - finished)
            log.info(
                "layer logits %d/%d prompts, %.0f s (~%.0f s left)",
                *(finished, len(rows), elapsed, eta),
            )
    return out
