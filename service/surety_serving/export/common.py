"""What both exporters (classifier, judge) share: the entry's file names, ``ExportError``, the
graph's metadata stamp, the ORT session of the checks, the optional graph rewrite, the
config.yaml writer, export.json's digests, and the move of a finished entry into the
repository. docs/models.md and docs/judge.md describe an entry's files."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

    from surety_serving.optimize.options import OptimizeOptions
    from surety_serving.optimize.report import Report

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FORMAT",
    "LABELS_FILE",
    "METADATA_FILE",
    "MODEL_FILE",
    "ONNX_OPSET",
    "TEXT_BATCHING",
    "TOKENIZER_FILE",
    "ExportError",
    "move_into",
    "optimize_graph",
    "ort_session",
    "read_export_metadata",
    "rewrite_record",
    "sha256_file",
    "stamp_metadata",
    "timed",
    "write_config",
    "write_export_metadata",
]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "surety-export/1"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.txt"
METADATA_FILE = "export.json"
CONFIG_FILE = "config.yaml"
ONNX_OPSET = 18
#: Dynamic batching of text models; rows are cheap to merge but padded to the longest.
TEXT_BATCHING = {"max_batch_size": 32, "max_queue_delay_ms": 2.0, "max_queue_size": 256}


class ExportError(RuntimeError):
    """The export failed a check (parity, graph shape, labels, score tokens, a rewrite)."""


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Record the block's wall time in ``seconds[key]`` (export.json's ``seconds``)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - start, 3)


def stamp_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the graph's metadata properties with ``metadata`` (``surety.*`` keys)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def check_graph_io(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """ExportError unless the graph's inputs and outputs are these names, in this order: the
    config.yaml written beside it names them."""
    for kind, found, expected in (
        ("inputs", [i.name for i in model.graph.input], list(inputs)),
        ("outputs", [o.name for o in model.graph.output], list(outputs)),
    ):
        if found != expected:
            raise ExportError(f"graph {kind} {found} differ from {expected}")


def ort_session(path: Path) -> Any:
    """An ORT session on ``path`` with the ai.surety library: the parity checks' runtime, with
    the serving options (:func:`surety_serving.runtime.session.session_options`) and ORT's default
    thread count (an export has the machine to itself)."""
    import onnxruntime as ort

    from surety_serving.runtime.session import session_options

    return ort.InferenceSession(str(path), session_options(0), providers=["CPUExecutionProvider"])


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks (a judge's graph is hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rewrite_record(report: Report, options: OptimizeOptions) -> dict[str, Any]:
    """The options, the replaced nodes and the drift of a ``surety optimize`` pass."""
    return {
        "options": options.record(),
        "replaced": [asdict(change) for change in report.replaced],
        "drift": report.drift,
    }


def optimize_graph(
    model_path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    options: OptimizeOptions,
    *,
    require_attention: bool = False,
) -> dict[str, Any]:
    """Rewrite the exported graph in place (:mod:`surety_serving.optimize`), checked against the
    graph
    it rewrites on ``samples`` (feeds); return export.json's record of it. A drift past the
    tolerance raises :class:`ExportError` with the pass's report, and so does a pass that
    replaced nothing when ``require_attention`` (``--attention`` asked for a rewrite)."""
    from surety_serving.optimize.options import DriftError, OptimizeError
    from surety_serving.optimize.pipeline import optimize_file

    what = f"--attention {options.attention}"
    try:
        report = optimize_file(model_path, model_path, options, samples=list(samples))
    except DriftError as error:
        raise ExportError(f"{what}: {error}\n" + error.report.format()) from error
    except OptimizeError as error:
        raise ExportError(f"{what}: {error}") from error
    if require_attention and not report.replaced:
        reasons = sorted({change.detail for change in report.skipped})
        raise ExportError(
            f"{what}: no attention subgraph matched "
            f"({len(report.skipped)} softmax(es) skipped: {'; '.join(reasons)})"
        )
    log.info(
        "graph rewrite: %d node(s) replaced, max drift %.3g",
        len(report.replaced),
        report.max_drift,
    )
    return rewrite_record(report, options)


def write_export_metadata(model_root: Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``<model_root>/export.json``."""
    import json

    path = Path(model_root) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path


def read_export_metadata(model_root: Path) -> dict[str, Any]:
    """The ``export.json`` of the repository entry ``model_root``."""
    import json

    path = Path(model_root) / METADATA_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a {EXPORT_FORMAT} file")
    return data


def write_config(model_root: Path, config: Mapping[str, Any]) -> Path:
    """Validate ``config`` as the server will, and write ``<model_root>/config.yaml``."""
    import yaml

    from surety_serving.runtime.config import ModelConfig

    ModelConfig.model_validate(config)  # a config the server would refuse is an export bug
    path = Path(model_root) / CONFIG_FILE
    path.write_text(
        yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return path


def move_into(target: Path, exported: Path, version: int, files: Sequence[str]) -> None:
    """Move an entry exported beside ``target`` into place: whole when ``target`` is new, else
    its version folder and its top-level ``files`` replace theirs (other versions stay)."""
    if not target.exists():
        exported.rename(target)
        return
    shutil.rmtree(target / str(version), ignore_errors=True)
    (exported / str(version)).rename(target / str(version))
    for file in files:
        (exported / file).replace(target / file)
