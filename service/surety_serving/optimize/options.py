"""What the pass is asked to do, and the errors it refuses with."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from surety_serving.kernels.reference import ESTIMATORS, PATTERNS
from surety_serving.optimize.report import Report

#: ``--attention``: leave attention to the softmax rewrite, or make it ai.surety::SparseAttention.
ATTENTION_MODES = ("none", "sparse")
#: Default largest |rewritten − original| allowed on any output element.
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SparseOptions:
    """The attributes of each ``ai.surety::SparseAttention`` the pass writes (same names; see
    docs/kernels.md): which keys every query attends to exactly, and how the mass outside that
    set is estimated. ``num_heads``, ``scale`` and ``causal`` come from the matched graph."""

    pattern: str = "dense"
    density: float = 0.0
    window: int = 0
    block_size: int = 64
    num_local_blocks: int = 1
    num_global: int = 0
    estimator: str = "none"
    sample_stride: int = 32

    def __post_init__(self) -> None:
        counts = min(self.window, self.num_local_blocks, self.num_global)
        sizes = min(self.block_size, self.sample_stride)
        band = self.pattern != "band" or self.window > 0 or 0 < self.density <= 1
        checks = {
            f"pattern must be one of {PATTERNS}": self.pattern in PATTERNS,
            f"estimator must be one of {ESTIMATORS}": self.estimator in ESTIMATORS,
            "band needs window > 0 or density in (0, 1]": band,
            "window, num_local_blocks and num_global must be >= 0": counts >= 0,
            "block_size and sample_stride must be >= 1": sizes >= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

    def attributes(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OptimizeOptions:
    """``softmax``: rewrite last-axis Softmax nodes into TwoPassSoftmax; ``attention``: one of
    ATTENTION_MODES; ``tolerance``: the largest |rewritten − original| allowed on any element of
    any output over the sample inputs, relative to that output's magnitude, max(1, max
    |original|) (optimize.verify.magnitude)."""

    softmax: bool = True
    attention: str = "none"
    sparse: SparseOptions = field(default_factory=SparseOptions)
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def record(self) -> dict[str, Any]:
        """The options as a config or metadata record (the sparse ones only when used)."""
        record: dict[str, Any] = {"softmax": self.softmax, "attention": self.attention}
        if self.attention == "sparse":
            record.update(self.sparse.attributes())
        return {**record, "tolerance": self.tolerance}


class OptimizeError(RuntimeError):
    """The pass could not produce a model it can vouch for (it would not run, or it drifts)."""


class DriftError(OptimizeError):
    """The rewritten model's outputs differ from the original's by more than the tolerance."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


#: ``--option`` help for each SparseOptions field (the option is the field, dashes for
#: underscores); ``choices`` where the op takes names.
SPARSE_HELP = {
    "pattern": "keys each query attends to exactly",
    "density": "band: the window as a fraction of the keys, used when --window is 0",
    "window": "band: keys within window/2 of the query (0: from --density)",
    "block_size": "block_local_global: tokens per block",
    "num_local_blocks": "block_local_global: blocks either side a query attends to",
    "num_global": "block_local_global: leading tokens attending to and attended by all",
    "estimator": "how the softmax mass outside the pattern is estimated",
    "sample_stride": "sampled: every how many queries a row is computed densely",
}
SPARSE_CHOICES = {"pattern": PATTERNS, "estimator": ESTIMATORS}


def add_optimize_arguments(
    parser: argparse.ArgumentParser, tolerance_flag: str = "--tolerance"
) -> None:
    """``--attention``, the SparseOptions and the drift tolerance (``tolerance_flag``: an
    export has a parity tolerance of its own): shared by ``surety optimize`` and ``surety
    export classifier``."""
    parser.add_argument(
        "--attention",
        choices=ATTENTION_MODES,
        default="none",
        help="sparse: rewrite attention subgraphs into ai.surety::SparseAttention with the "
        "options below (default: none)",
    )
    defaults = SparseOptions()
    for option in fields(SparseOptions):
        default = getattr(defaults, option.name)
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=type(default),
            default=default,
            choices=SPARSE_CHOICES.get(option.name),
            help=f"{SPARSE_HELP[option.name]} (default %(default)s)",
        )
    parser.add_argument(
        tolerance_flag,
        dest="optimize_tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="TOLERANCE",
        help="the largest difference allowed between the rewritten and the original model, on "
        "any element of any output over sample inputs, relative to the output's magnitude "
        "max(1, max |original|); past it the rewritten model is refused and nothing is written "
        "(default %(default)g)",
    )


def options_from_arguments(args: argparse.Namespace, *, softmax: bool = True) -> OptimizeOptions:
    """The OptimizeOptions that :func:`add_optimize_arguments`' options describe."""
    sparse = SparseOptions(
        **{option.name: getattr(args, option.name) for option in fields(SparseOptions)}
    )
    return OptimizeOptions(
        softmax=softmax, attention=args.attention, sparse=sparse, tolerance=args.optimize_tolerance
    )
