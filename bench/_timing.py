"""Interleaved A/B timing for benchmarks on shared, noisy machines.

Every round runs each contender once, in an order rotated from round to round, so that drifts
in machine load (other processes on the same cores, frequency changes) hit all contenders alike.
Report medians and ratios of medians, never lone absolute times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one contender."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(
    contenders: Mapping[str, Callable[[], object]], *, warmup: int = 5, runs: int = 30
) -> dict[str, Timing]:
    """Time each contender `runs` times (after `warmup` untimed rounds), interleaved."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in samples.items()}
