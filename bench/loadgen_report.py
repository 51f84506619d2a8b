"""The load generator's figures: what each response was (a recorder per load and window), their
summary (counts, latency percentiles, goodput, the contract's problems), and how they print.

Part of bench/loadgen.py (the command line); bench/loadgen_drivers.py offers the load.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surety_kit.wire import Response

REJECTIONS = frozenset({429, 503})
EXPECTED = frozenset({200, *REJECTIONS})


@dataclass
class Recorder:
    """Responses of one load (or of the prober) in a measurement window.

    Latencies are recorded for requests sent (open loop: scheduled) inside the window; requests
    still in flight when it closes get a grace period, so the slowest are not dropped. Those
    sent during the warm-up are kept apart: the first second of a thousand clients connecting
    at once is a cold-start burst, not the steady state the window measures. Accepted
    throughput counts 200s *answered* inside the window. Connection errors, refusals without
    ``Retry-After`` and requests never answered count from the first request on.
    """

    start: float = float("inf")
    stop: float = float("inf")
    latencies: dict[int, list[float]] = field(default_factory=dict)
    warmup: dict[int, list[float]] = field(default_factory=dict)
    ok_in_window: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0
    retry_after: Counter[float] = field(default_factory=Counter)
    unfinished: int = 0
    dropped: int = 0

    def response(self, sent: float, done: float, response: Response) -> None:
        if self.start <= done <= self.stop and response.status == 200:
            self.ok_in_window += 1
        if sent >= self.stop:
            return
        bucket = self.latencies if sent >= self.start else self.warmup
        bucket.setdefault(response.status, []).append(done - sent)
        if response.status in REJECTIONS:
            if response.retry_after is None:
                self.missing_retry_after += 1
            else:
                self.retry_after[response.retry_after] += 1

    def error(self, at: float, exc: BaseException) -> None:
        if at < self.stop:
            self.errors[type(exc).__name__] += 1

    def cancelled(self, sent: float) -> None:
        """A request still unanswered when the run gave up on it."""
        if sent < self.stop:
            self.unfinished += 1


@dataclass(frozen=True)
class Latency:
    """Count and percentiles of a set of latencies, in milliseconds."""

    count: int
    p50: float
    p99: float
    max: float

    def summary(self) -> dict[str, float | None]:
        """JSON-ready (no NaN: an empty set has no percentiles)."""
        return {
            "count": self.count,
            **{
                k: None if v != v else round(v, 3)
                for k, v in (("p50", self.p50), ("p99", self.p99), ("max", self.max))
            },
        }

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            return cls(0, float("nan"), float("nan"), float("nan"))
        values = np.asarray(seconds) * 1e3
        p50, p99 = np.percentile(values, [50, 99])
        return cls(len(values), float(p50), float(p99), float(values.max()))


@dataclass(frozen=True)
class Report:
    """The figures of one load over one window."""

    name: str
    seconds: float
    latencies: dict[int, list[float]]
    warmup: dict[int, list[float]]
    ok_in_window: int
    errors: dict[str, int]
    missing_retry_after: int
    retry_after: dict[float, int]
    unfinished: int
    dropped: int

    @classmethod
    def of(cls, name: str, recorder: Recorder) -> Report:
        return cls(
            name=name,
            seconds=recorder.stop - recorder.start,
            latencies=recorder.latencies,
            warmup=recorder.warmup,
            ok_in_window=recorder.ok_in_window,
            errors=dict(recorder.errors),
            missing_retry_after=recorder.missing_retry_after,
            retry_after=dict(recorder.retry_after),
            unfinished=recorder.unfinished,
            dropped=recorder.dropped,
        )

    @property
    def goodput(self) -> float:
        """Accepted (200) responses per second."""
        return self.ok_in_window / self.seconds if self.seconds > 0 else 0.0

    @property
    def counts(self) -> dict[int, int]:
        return {status: len(values) for status, values in sorted(self.latencies.items())}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def connection_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def unexpected(self) -> dict[int, int]:
        """Counts of statuses other than 200/429/503."""
        return {status: n for status, n in self.counts.items() if status not in EXPECTED}

    def latency(self, statuses: frozenset[int] | set[int] | None = None) -> Latency:
        """Latency over the given statuses (all when None)."""
        chosen = (
            self.latencies
            if statuses is None
            else {s: v for s, v in self.latencies.items() if s in statuses}
        )
        return Latency.of([x for values in chosen.values() for x in values])

    def problems(self) -> list[str]:
        """Anything the overload contract says should not happen, one phrase each."""
        out = []
        if self.unexpected:
            out.append(f"unexpected statuses {fmt_counts(self.unexpected)}")
        if self.connection_errors:
            out.append(f"connection errors {self.errors}")
        if self.missing_retry_after:
            out.append(f"{self.missing_retry_after} 429/503 without Retry-After")
        if self.unfinished:
            out.append(f"{self.unfinished} unfinished after the grace period")
        if self.dropped:
            out.append(f"{self.dropped} arrivals dropped by the generator")
        return out

    def warmup_latency(self, statuses: frozenset[int] | set[int]) -> Latency:
        """Latency of the warm-up's requests (the cold start) over the given statuses."""
        return Latency.of([x for s, v in self.warmup.items() if s in statuses for x in v])

    @property
    def accepted(self) -> Latency:
        return self.latency({200})

    @property
    def rejected(self) -> Latency:
        return self.latency(REJECTIONS)

    def summary(self) -> dict[str, Any]:
        """Everything but the raw latencies, JSON-ready."""
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "goodput_per_s": round(self.goodput, 2),
            "counts": {str(k): v for k, v in self.counts.items()},
            "accepted_ms": self.accepted.summary(),
            "rejected_ms": self.rejected.summary(),
            "warmup_counts": {str(k): len(v) for k, v in sorted(self.warmup.items())},
            "warmup_accepted_ms": self.warmup_latency({200}).summary(),
            "warmup_rejected_ms": self.warmup_latency(REJECTIONS).summary(),
            "connection_errors": self.errors,
            "missing_retry_after": self.missing_retry_after,
            "retry_after_s": {str(k): v for k, v in self.retry_after.items()},
            "unfinished": self.unfinished,
            "dropped": self.dropped,
        }


@dataclass(frozen=True)
class Run:
    """Reports of loads run together, the prober's, and the generator's own CPU use."""

    loads: dict[str, Report]
    liveness: Report
    seconds: float
    client_cpu_s: float

    @property
    def client_cpu_share(self) -> float:
        """The generator process's CPU time over wall time (1.0 = one core busy)."""
        return self.client_cpu_s / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "client_cpu_share": round(self.client_cpu_share, 3),
            "loads": {name: report.summary() for name, report in self.loads.items()},
            "liveness": self.liveness.summary() | {"latency_ms": self.liveness.latency().summary()},
        }


def fmt_ms(value: float) -> str:
    return "-" if value != value else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def fmt_counts(counts: Mapping[int, int]) -> str:
    """``200:1234 429:56``, statuses outside 200/429/503 marked with ``!``."""
    return " ".join(
        f"{'!' if status not in EXPECTED else ''}{status}:{n}" for status, n in counts.items()
    )


def print_run(run: Run, title: str = "") -> None:
    """A compact table of one run."""
    if title:
        print(f"\n== {title} ==")
    print(
        f"{'load':<28}{'200/s':>8}{'200 p50':>9}{'200 p99':>9}{'rej p99':>9}{'rej max':>9}"
        f"  counts (errors)"
    )
    for report in run.loads.values():
        accepted, rejected = report.accepted, report.rejected
        extra = [p for p in report.problems() if not p.startswith("unexpected")]
        print(
            f"{report.name:<28}{report.goodput:8.1f}{fmt_ms(accepted.p50):>9}"
            f"{fmt_ms(accepted.p99):>9}{fmt_ms(rejected.p99):>9}{fmt_ms(rejected.max):>9}"
            f"  {fmt_counts(report.counts)} {' '.join(extra)}"
        )
    for report in run.loads.values():
        cold_ok, cold_rejected = report.warmup_latency({200}), report.warmup_latency(REJECTIONS)
        print(
            f"  {report.name} warm-up (cold start, not in the figures above): "
            f"200 max {fmt_ms(cold_ok.max)} ms, 429/503 max {fmt_ms(cold_rejected.max)} ms "
            f"({fmt_counts({s: len(v) for s, v in sorted(report.warmup.items())})})"
        )
    live = run.liveness.latency()
    problems = ""
    if run.liveness.connection_errors or run.liveness.unfinished:
        problems = f", conn errors {run.liveness.errors}, unfinished {run.liveness.unfinished}"
    print(
        f"liveness: p50 {fmt_ms(live.p50)} p99 {fmt_ms(live.p99)} max {fmt_ms(live.max)} ms "
        f"({fmt_counts(run.liveness.counts)}{problems}); "
        f"client CPU {run.client_cpu_share:.0%} of a core"
    )
