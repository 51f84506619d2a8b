"""The locust capacity profile: its step arithmetic, and a headless run against the real server.

capacity_steps.py is loaded from its file (load_tests/ is no package); it imports no locust,
which would patch this process's standard library for gevent. Locust itself runs in a child
process, as in test_load_smoke.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.service.helpers import run_locust

pytestmark = pytest.mark.model

LOAD_TESTS = Path(__file__).resolve().parents[2] / "load_tests"


def _load_steps() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "capacity_steps", LOAD_TESTS / "capacity_steps.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


steps = _load_steps()


def test_percentile_of_a_histogram():
    histogram = {1: 50, 2: 40, 5: 9, 40: 1}
    assert steps.percentile_ms(histogram, 0.5) == 1
    assert steps.percentile_ms(histogram, 0.9) == 2
    assert steps.percentile_ms(histogram, 0.99) == 5
    assert steps.percentile_ms(histogram, 1.0) == 40
    assert steps.percentile_ms({}, 0.99) == 0


def test_a_step_is_the_difference_of_two_snapshots():
    start = steps.Snapshot(at_s=5.0, requests=100, failures=1, response_times={1: 90, 80: 10})
    end = steps.Snapshot(
        at_s=15.0, requests=1100, failures=3, response_times={1: 890, 2: 180, 80: 10, 9: 20}
    )
    step = steps.measure(2, 8, start, end)
    # The 10 slow requests of the earlier step are not this step's.
    assert (step.requests, step.failures, step.seconds) == (1000, 2, 10.0)
    assert step.p50_ms == 1 and step.p99_ms == 9
    assert step.rps == 100.0
    assert step.held(p99_bound_ms=9, max_error_ratio=0.01)
    assert not step.held(p99_bound_ms=8, max_error_ratio=0.01)
    assert not step.held(p99_bound_ms=100, max_error_ratio=0.001)


def test_the_last_step_that_held_precedes_the_first_that_did_not():
    plan = steps.Plan(
        step_users=4, step_seconds=20, max_users=64, p99_bound_ms=50, max_error_ratio=0.01
    )
    assert plan.step_at(0) == 1 and plan.step_at(19.9) == 1 and plan.step_at(20) == 2
    assert plan.users(3) == 12 and plan.last_step == 16 and plan.settle_s == 5.0
    report = steps.Report(plan)
    for index, p99 in enumerate((10, 30, 70, 20), start=1):
        report.steps.append(steps.Step(index, plan.users(index), 15.0, 1000, 0, 5, p99))
    assert report.last_held().index == 2
    assert "capacity: last step that held: step 2: 8 users" in "\n".join(report.lines())
    assert json.loads(report.to_json())["last_held"] == 2
    with pytest.raises(ValueError, match="not a plan"):
        steps.Plan(step_users=4, step_seconds=20, max_users=2, p99_bound_ms=1, max_error_ratio=0)


def run_capacity(
    server: str, tmp_path: Path, *options: str
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """A headless capacity run; its JSON report and locust's CSV statistics by name."""
    report = tmp_path / "capacity.json"
    output, rows = run_locust(
        LOAD_TESTS / "capacity_profile.py",
        server,
        tmp_path / "capacity",
        *("--step-users", "2", "--step-seconds", "2", "--max-users", "4"),
        *("--capacity-json", str(report), *options),
    )
    assert "capacity: stopped:" in output
    return json.loads(report.read_text()), rows


@pytest.mark.slow  # a load profile of several steps
def test_capacity_profile_steps_up_to_the_max(server, tmp_path):
    report, rows = run_capacity(server, tmp_path, "--p99-bound-ms", "5000")
    assert [(step["index"], step["users"]) for step in report["steps"]] == [(1, 2), (2, 4)]
    assert report["stopped"].startswith("--max-users 4 reached")
    assert report["last_held"] == 2
    for step in report["steps"]:
        assert step["requests"] > 0 and step["failures"] == 0
        assert 0 <= step["p50_ms"] <= step["p99_ms"] <= 5000
    total = rows["Aggregated"]
    assert int(total["Request Count"]) >= sum(step["requests"] for step in report["steps"])
    assert int(total["Failure Count"]) == 0
    assert "infer [1]" in rows


@pytest.mark.slow
def test_capacity_profile_stops_at_the_bound(server, tmp_path):
    # No HTTP request is answered within 0 ms (locust records whole milliseconds; the server
    # alone spends about 0.65 ms of CPU on one): the first step cannot hold.
    report, _ = run_capacity(server, tmp_path, "--p99-bound-ms", "0")
    (step,) = report["steps"]
    assert step["requests"] > 0 and step["p99_ms"] > 0
    assert report["stopped"] == "step 1 did not hold"
    assert report["last_held"] is None
