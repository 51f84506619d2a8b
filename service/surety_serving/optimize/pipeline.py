"""The pass: rewrite, then check the rewritten model against the original before handing it out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import external_data_helper

from surety_serving import kernels
from surety_serving.optimize.attention import rewrite_attention
from surety_serving.optimize.graph import Graph
from surety_serving.optimize.options import DriftError, OptimizeError, OptimizeOptions
from surety_serving.optimize.report import Report
from surety_serving.optimize.softmax import rewrite_softmax
from surety_serving.optimize.verify import Feeds, drift, sample_inputs

#: Where a model saved with external data keeps it: beside the model, under its name + this.
EXTERNAL_DATA_SUFFIX = ".data"


def _import_surety(model: onnx.ModelProto) -> None:
    """Declare the ai.surety opset the new nodes belong to (version 1, the library's)."""
    if not any(node.domain == kernels.DOMAIN for node in model.graph.node):
        return
    versions = {entry.domain: entry.version for entry in model.opset_import}
    version = versions.get(kernels.DOMAIN)
    if version is None:
        model.opset_import.append(onnx.helper.make_opsetid(kernels.DOMAIN, kernels.OPSET_VERSION))
    elif version != kernels.OPSET_VERSION:
        raise OptimizeError(
            f"the model imports {kernels.DOMAIN} version {version}; the library has "
            f"version {kernels.OPSET_VERSION}"
        )


def rewrite(
    model: onnx.ModelProto, options: OptimizeOptions | None = None
) -> tuple[onnx.ModelProto, Report]:
    """The rewritten copy of ``model`` (``model`` itself is left alone), unchecked: what
    :func:`optimize` checks before handing it out."""
    options = options or OptimizeOptions()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = Graph(rewritten)
    report = Report(tolerance=options.tolerance)
    if options.attention == "sparse":
        rewrite_attention(graph, options.sparse, report)
    if options.softmax:
        rewrite_softmax(graph, report)
    rewritten = graph.finish()
    _import_surety(rewritten)
    return rewritten, report


def optimize(
    model: onnx.ModelProto,
    options: OptimizeOptions | None = None,
    *,
    samples: Sequence[Feeds] | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Rewrite a copy of ``model`` and check it against ``model``.

    ``samples`` are the input feeds the two models are compared on (default: one batch from
    :func:`~surety_serving.optimize.verify.sample_inputs`). Raises :class:`DriftError` when an output
    moves by more than ``options.tolerance``, :class:`OptimizeError` when either model does
    not run.
    """
    options = options or OptimizeOptions()
    rewritten, report = rewrite(model, options)
    feeds = list(samples) if samples is not None else [sample_inputs(model)]
    report.drift = drift(model, rewritten, feeds)
    over = {name: value for name, value in report.drift.items() if not value <= options.tolerance}
    if over:
        worst = max(over, key=lambda name: over[name])
        raise DriftError(
            f"{len(over)} output(s) drift past the tolerance {options.tolerance:g}; worst "
            f"'{worst}' by {over[worst]:.3g}",
            report,
        )
    return rewritten, report


def uses_external_data(path: Path) -> bool:
    """Whether the model at ``path`` keeps tensors in external files."""
    model = onnx.load(str(path), load_external_data=False)
    return any(
        external_data_helper.uses_external_data(tensor) for tensor in model.graph.initializer
    )


def save(model: onnx.ModelProto, path: Path, *, external_data: bool) -> None:
    """Write ``model``; with ``external_data`` its tensors go to ``<path>.data`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data:
        onnx.save(model, str(path))
        return
    location = path.name + EXTERNAL_DATA_SUFFIX
    # onnx appends to an existing data file, which would leave stale bytes in it.
    (path.parent / location).unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=location)


def optimize_file(
    source: Path,
    target: Path,
    options: OptimizeOptions | None = None,
    *,
    samples: Sequence[Feeds] | None = None,
) -> Report:
    """Optimize the model at ``source`` into ``target``, written only once it passed the check
    (with external data when ``source`` has it)."""
    model = onnx.load(str(source))
    rewritten, report = optimize(model, options, samples=samples)
    save(rewritten, target, external_data=uses_external_data(source))
    return report
