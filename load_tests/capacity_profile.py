"""Capacity profile: closed-loop users added in steps until the p99 bound is passed.

Every ``--step-seconds`` (20) the profile adds ``--step-users`` (4) users, each sending one
request after another with no think time, and judges the step that ended: its p99 latency must
stay within ``--p99-bound-ms`` (100) and its share of failed requests, refusals (429) included,
within ``--max-error-ratio`` (1%). The first step that does not hold stops the run, as does
reaching ``--max-users`` (64). Printed at the end: every step's throughput, p50, p99 and errors,
and the last step that held: the replica's capacity at that latency bound.
``--capacity-json PATH`` writes the same as JSON.

``--capacity-model digits`` (the default) sends batch-1 JSON infer requests to digits;
``fortune-topics`` sends /score requests of one fortune text each. Against a local server, the
container, or a cluster (``-H`` is the base URL):

    locust -f load_tests/capacity_profile.py --headless -H http://127.0.0.1:8000 --p99-bound-ms 50
    locust -f load_tests/capacity_profile.py --headless -H http://127.0.0.1:8000 \\
        --capacity-model fortune-topics --step-users 2 --p99-bound-ms 500

Measure one replica (a port-forward to one pod, not the Service) for per-pod capacity, and
run the load generator on other cores than the server's: a busy client inflates the latency it
measures. --users, --spawn-rate and --run-time do not apply: the steps set the load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from capacity_steps import Plan, Report, Snapshot, measure
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.env import Environment

from surety_kit.payloads import DIGITS, FORTUNE_TOPICS, JSON, digits_json, fortune_json

log = logging.getLogger(__name__)


# Locust leaves EventHook.add_listener and LoadTestShape's methods unannotated: the ignores
# below are for that alone.
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--p99-bound-ms", type=float, default=100.0, help="a step holds while its p99 is within"
    )
    parser.add_argument(
        "--max-error-ratio",
        type=float,
        default=0.01,
        help="a step holds while at most this share of its requests fail (429 included)",
    )
    parser.add_argument("--step-users", type=int, default=4, help="users added at each step")
    parser.add_argument("--step-seconds", type=float, default=20.0, help="length of a step")
    parser.add_argument("--max-users", type=int, default=64, help="the last step's users")
    parser.add_argument(
        "--capacity-model",
        choices=[DIGITS, FORTUNE_TOPICS],
        default=DIGITS,
        help="digits: batch-1 infer; fortune-topics: batch-1 score of a fortune",
    )
    parser.add_argument("--capacity-json", default="", help="also write the report here")


class CapacityUser(FastHttpUser):
    """A closed-loop client of one model: one request after another, no think time."""

    wait_time = constant(0)

    @task
    def request(self) -> None:
        options = self.environment.parsed_options
        model = options.capacity_model if options is not None else DIGITS
        if model == DIGITS:
            self.client.post(
                f"/v2/models/{DIGITS}/infer", data=digits_json(1), headers=JSON, name="infer [1]"
            )
        else:
            self.client.post(
                f"/v2/models/{FORTUNE_TOPICS}/score",
                data=fortune_json(1),
                headers=JSON,
                name="score text [1]",
            )


class StepShape(LoadTestShape):
    """Users in steps, each step judged when it ends; stops at the first that does not hold."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.report: Report | None = None
        self._step = 0
        self._start: Snapshot | None = None

    def reset_time(self) -> None:
        super().reset_time()  # type: ignore[no-untyped-call]
        self._step, self._start, self.report = 0, None, None

    def _environment(self) -> Environment:
        assert self.runner is not None, "locust sets the runner before the first tick"
        return self.runner.environment

    def _snapshot(self, run_s: float) -> Snapshot:
        total = self._environment().stats.total
        return Snapshot(run_s, total.num_requests, total.num_failures, dict(total.response_times))

    def _plan(self) -> Plan:
        options = self._environment().parsed_options
        assert options is not None, "the profile runs from locust's command line"
        return Plan(
            step_users=options.step_users,
            step_seconds=options.step_seconds,
            max_users=options.max_users,
            p99_bound_ms=options.p99_bound_ms,
            max_error_ratio=options.max_error_ratio,
        )

    def tick(self) -> tuple[int, float] | None:
        if self.report is None:
            self.report = Report(self._plan())
        plan, report = self.report.plan, self.report
        run_s: float = self.get_run_time()  # type: ignore[no-untyped-call]
        step = plan.step_at(run_s)
        if step != self._step:
            if self._start is not None:
                ended = measure(
                    self._step, plan.users(self._step), self._start, self._snapshot(run_s)
                )
                report.steps.append(ended)
                log.info("capacity: %s", ended.describe())
                if not ended.held(plan.p99_bound_ms, plan.max_error_ratio):
                    report.stopped = f"step {ended.index} did not hold"
                    return None
            if step > plan.last_step:
                report.stopped = f"--max-users {plan.max_users} reached, every step held"
                return None
            self._step, self._start = step, None
            report.stopped = f"the run ended during step {step}"
        if self._start is None and run_s - (step - 1) * plan.step_seconds >= plan.settle_s:
            self._start = self._snapshot(run_s)
        # Start the step's users within a fraction of a second: the ramp is not what is measured.
        return plan.users(step), float(max(10 * plan.step_users, 1))


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _report(environment: Environment, **_: Any) -> None:
    shape = environment.shape_class
    if not isinstance(shape, StepShape) or shape.report is None:
        return
    for line in shape.report.lines():
        print(line, flush=True)
    options = environment.parsed_options
    if options is not None and options.capacity_json:
        Path(options.capacity_json).write_text(shape.report.to_json() + "\n")
