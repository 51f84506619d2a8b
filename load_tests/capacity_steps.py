"""The capacity profile's bookkeeping: steps of users, each measured and judged on its own.

Apart from capacity_profile.py so that it imports no locust (importing locust patches the standard
library for gevent, which a test process must not suffer) and can be tested directly.

Locust's statistics are cumulative from the start of the run. A step is measured as the
difference of two snapshots of them: one taken when the step has settled (its new users started
and past their first requests), one when the step ends. Its p99 comes from the difference of
locust's response-time histograms (milliseconds, rounded as locust rounds them), its error ratio
from the difference of the counts; refusals (429) count as errors, since under overload the
server refuses rather than queues (docs/operations.md, Admission and overload), and a bound on
latency alone would never be passed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Snapshot:
    """Cumulative statistics at one moment: ``response_times`` maps milliseconds to counts."""

    at_s: float
    requests: int
    failures: int
    response_times: Mapping[int, int]


def percentile_ms(histogram: Mapping[int, int], fraction: float) -> int:
    """The smallest recorded time within which ``fraction`` of the requests finished."""
    total = sum(histogram.values())
    if total == 0:
        return 0
    needed = fraction * total
    seen = 0
    for milliseconds in sorted(histogram):
        seen += histogram[milliseconds]
        if seen >= needed:
            return milliseconds
    return max(histogram)


@dataclass(frozen=True)
class Step:
    """One step's figures, from its settled start to its end."""

    index: int
    users: int
    seconds: float
    requests: int
    failures: int
    p50_ms: int
    p99_ms: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def held(self, p99_bound_ms: float, max_error_ratio: float) -> bool:
        """Within both bounds, with requests to judge by."""
        return (
            self.requests > 0
            and self.p99_ms <= p99_bound_ms
            and self.error_ratio <= max_error_ratio
        )

    def describe(self) -> str:
        return (
            f"step {self.index}: {self.users} users, {self.rps:.1f} req/s, "
            f"p50 {self.p50_ms} ms, p99 {self.p99_ms} ms, errors {100 * self.error_ratio:.2f}% "
            f"({self.requests} requests in {self.seconds:.1f} s)"
        )


def measure(index: int, users: int, start: Snapshot, end: Snapshot) -> Step:
    """The step between two snapshots of the cumulative statistics."""
    histogram = {
        milliseconds: count - start.response_times.get(milliseconds, 0)
        for milliseconds, count in end.response_times.items()
        if count > start.response_times.get(milliseconds, 0)
    }
    return Step(
        index=index,
        users=users,
        seconds=end.at_s - start.at_s,
        requests=end.requests - start.requests,
        failures=end.failures - start.failures,
        p50_ms=percentile_ms(histogram, 0.50),
        p99_ms=percentile_ms(histogram, 0.99),
    )


@dataclass(frozen=True)
class Plan:
    """``step_users`` more users every ``step_seconds``, up to ``max_users``."""

    step_users: int
    step_seconds: float
    max_users: int
    p99_bound_ms: float
    max_error_ratio: float

    def __post_init__(self) -> None:
        if self.step_users < 1 or self.step_seconds <= 0 or self.max_users < self.step_users:
            raise ValueError(f"not a plan of steps: {self}")

    @property
    def settle_s(self) -> float:
        """Time left out at the start of each step: a quarter of it, 5 s at most."""
        return min(5.0, self.step_seconds / 4)

    def step_at(self, run_s: float) -> int:
        """The index (from 1) of the step running at ``run_s`` seconds."""
        return int(run_s // self.step_seconds) + 1

    def users(self, step: int) -> int:
        return step * self.step_users

    @property
    def last_step(self) -> int:
        return self.max_users // self.step_users


@dataclass
class Report:
    """Every measured step and why the run stopped."""

    plan: Plan
    steps: list[Step] = field(default_factory=list)
    stopped: str = "the run ended before a step was measured"

    def last_held(self) -> Step | None:
        held = None
        for step in self.steps:
            if not step.held(self.plan.p99_bound_ms, self.plan.max_error_ratio):
                break
            held = step
        return held

    def lines(self) -> list[str]:
        plan = self.plan
        bounds = f"p99 <= {plan.p99_bound_ms:g} ms, errors <= {100 * plan.max_error_ratio:g}%"
        out = [f"capacity: {bounds}"]
        for step in self.steps:
            verdict = "held" if step.held(plan.p99_bound_ms, plan.max_error_ratio) else "over"
            out.append(f"capacity: {step.describe()}: {verdict}")
        out.append(f"capacity: stopped: {self.stopped}")
        held = self.last_held()
        if held is None:
            out.append("capacity: no step held")
        else:
            out.append(f"capacity: last step that held: {held.describe()}")
        return out

    def to_json(self) -> str:
        held = self.last_held()
        return json.dumps(
            {
                "plan": asdict(self.plan),
                "steps": [{**asdict(step), "rps": step.rps} for step in self.steps],
                "stopped": self.stopped,
                "last_held": None if held is None else held.index,
            },
            indent=2,
        )
