"""What both exporters (classifier, judge) record in export.json: file digests and the graph
rewrite's outcome."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surety_serving.optimize.options import OptimizeOptions
    from surety_serving.optimize.report import Report


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
