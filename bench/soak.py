"""Soak benchmark: both models at 80% of capacity for 10 minutes, then 1×/2×/4× capacity.

Against one ``surety serve`` process on the default repository:

1. Capacity: 16 closed-loop clients on each model *at once* (the two models share the
   machine's cores, so what each sustains alone would overload them together); the 200s per
   second of each model are its capacity. ``--rate MODEL=RPS`` skips the measurement.
2. Soak: open-loop (Poisson) arrivals at 80% of each model's capacity, both models at once, for
   ``--duration`` seconds, the server's RSS sampled from /proc/<pid>/status every few seconds.
   Reported: RSS after the warm-up (60 s) and at the end, growth, errors (anything but 200,
   connection errors, requests never answered), p50/p99 per model, liveness p99.
3. Steps: 1×, 2× and 4× capacity for ``--step-seconds`` each: goodput and p99 per model.

Open-loop latency runs from each request's scheduled arrival, so a backlog in the generator is
counted as the wait it is. Targets (issue 8): 0 errors and RSS growth < 5% over the soak.

    .venv/bin/python bench/soak.py --model-repository model_repository [--duration 600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import add_server_arguments, require_models
from loadgen_drivers import ClosedLoop, Load, OpenLoop, run
from loadgen_report import Report, Run, fmt_counts, fmt_ms, print_run

from surety_kit.metrics import settle
from surety_kit.payloads import DIGITS, FORTUNE_TOPICS, model_requests
from surety_kit.server import serve

MODELS = (DIGITS, FORTUNE_TOPICS)
TARGET_RSS_GROWTH = 0.05
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval`` s on a thread (the event loop stays free)."""

    pid: int
    interval: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        started = time.perf_counter()

        def sample() -> None:
            while True:
                self.samples.append((time.perf_counter() - started, rss_bytes(self.pid)))
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def at(self, seconds: float) -> tuple[float, int]:
        """The first sample taken at or after ``seconds`` (the last one if none)."""
        return next(((t, r) for t, r in self.samples if t >= seconds), self.samples[-1])

    def slope_mib_per_min(self, after: float) -> float:
        """Least-squares RSS trend over the samples after ``after`` s, MiB per minute."""
        points = [(t, r) for t, r in self.samples if t >= after]
        if len(points) < 3:
            return float("nan")
        t, r = np.array(points, dtype=float).T
        return float(np.polyfit(t / 60, r / MIB, 1)[0])


def errors_of(report: Report) -> int:
    """Everything that is not a 200: other statuses, connection errors, never answered, dropped."""
    not_ok = sum(n for status, n in report.counts.items() if status != 200)
    return not_ok + report.connection_errors + report.unfinished + report.dropped


def parse_rates(values: list[str]) -> dict[str, float]:
    rates = {}
    for value in values:
        model, _, rate = value.partition("=")
        if model not in MODELS or not rate:
            raise SystemExit(f"--rate takes MODEL=RPS with MODEL in {MODELS}, got {value!r}")
        rates[model] = float(rate)
    return rates


def main() -> None:
    """Measure capacity, soak at a fraction of it, then step it up; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--duration", type=float, default=600.0, help="soak seconds")
    parser.add_argument("--fraction", type=float, default=0.8, help="soak rate / capacity")
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="MODEL=RPS",
        help="capacity of a model (skips measuring it); repeat per model",
    )
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--capacity-clients", type=int, default=16)
    parser.add_argument("--rss-interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--rss-warmup",
        type=float,
        default=60.0,
        help="RSS growth is measured from this many seconds into the soak",
    )
    parser.add_argument(
        "--steps",
        type=float,
        nargs="*",
        default=[1.0, 2.0, 4.0],
        help="multiples of capacity run after the soak",
    )
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=256, help="per model")
    parser.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    args = parser.parse_args()

    require_models(args.model_repository, MODELS)
    capacity = parse_rates(args.rate)
    figures: dict[str, Any] = {"argv": sys.argv[1:]}
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (before the server)")

    with serve(args.model_repository, executable=args.surety, timeout=180) as server:
        endpoint = server.endpoint
        payloads = {m: model_requests(endpoint, m, timeout_ms=args.timeout_ms) for m in MODELS}

        def open_loads(multiple: float) -> list[Load]:
            return [
                OpenLoop(
                    f"{m} {multiple:g}x ({multiple * capacity[m]:.1f}/s)",
                    payloads[m],
                    multiple * capacity[m],
                    args.connections,
                    args.arrivals,
                    seed=i,
                )
                for i, m in enumerate(MODELS)
            ]

        missing = [m for m in MODELS if m not in capacity]
        if missing:
            loads = [ClosedLoop(m, payloads[m], args.capacity_clients) for m in missing]
            result = run(endpoint, loads, duration=args.capacity_seconds, warmup=5.0)
            print_run(result, f"capacity: {args.capacity_clients} clients per model, at once")
            capacity |= {m: result.loads[m].goodput for m in missing}
            figures["capacity_run"] = result.summary()
            settle(endpoint.url)
        figures["capacity_per_s"] = capacity
        print("capacity (200/s): " + ", ".join(f"{m} {capacity[m]:.1f}" for m in MODELS))

        sampler = RssSampler(server.pid, args.rss_interval)
        sampler.start()
        try:
            soak = run(endpoint, open_loads(args.fraction), duration=args.duration, warmup=2.0)
        finally:
            sampler.stop()
        print_run(soak, f"soak: {args.fraction:g}x capacity, {args.duration:g} s")
        settle(endpoint.url)

        steps: list[tuple[float, Run]] = []
        for multiple in args.steps:
            result = run(endpoint, open_loads(multiple), duration=args.step_seconds, warmup=3.0)
            print_run(result, f"step: {multiple:g}x capacity, {args.step_seconds:g} s")
            steps.append((multiple, result))
            settle(endpoint.url)

    warm_t, warm_rss = sampler.at(args.rss_warmup)
    end_t, end_rss = sampler.samples[-1]
    growth = (end_rss - warm_rss) / warm_rss
    slope = sampler.slope_mib_per_min(args.rss_warmup)
    errors = {name: errors_of(report) for name, report in soak.loads.items()}
    print(f"\n== soak summary: {args.fraction:g}x capacity on both models, {args.duration:g} s ==")
    print(
        f"RSS at {warm_t:.0f} s {warm_rss / MIB:.1f} MiB, at {end_t:.0f} s {end_rss / MIB:.1f} "
        f"MiB: growth {growth:+.2%} (target < {TARGET_RSS_GROWTH:.0%}); trend {slope:+.2f} "
        f"MiB/min; peak {max(r for _, r in sampler.samples) / MIB:.1f} MiB"
    )
    for name, report in soak.loads.items():
        ok = report.accepted
        print(
            f"{name}: {report.goodput:.1f}/s accepted, p50 {fmt_ms(ok.p50)} p99 {fmt_ms(ok.p99)} "
            f"max {fmt_ms(ok.max)} ms, errors {errors[name]} ({fmt_counts(report.counts)}"
            f"{', conn ' + str(report.errors) if report.errors else ''}"
            f"{f', unfinished {report.unfinished}' if report.unfinished else ''}"
            f"{f', dropped {report.dropped}' if report.dropped else ''})"
        )
    live = soak.liveness.latency()
    print(
        f"liveness p99 {fmt_ms(live.p99)} ms, max {fmt_ms(live.max)} ms; "
        f"errors in all: {sum(errors.values())} (target 0)"
    )

    print("\n== steps: goodput (200/s) and latency (ms) at multiples of capacity ==")
    print(
        f"{'model':<16}{'x':>4}{'offered/s':>11}{'200/s':>9}{'of cap':>8}{'200 p50':>9}"
        f"{'200 p99':>9}{'rej p99':>9}{'live p99':>10}  counts"
    )
    for multiple, result in steps:
        for model, report in zip(MODELS, result.loads.values(), strict=True):
            ok = report.accepted
            print(
                f"{model:<16}{multiple:4g}{multiple * capacity[model]:11.1f}"
                f"{report.goodput:9.1f}{report.goodput / capacity[model]:8.0%}"
                f"{fmt_ms(ok.p50):>9}{fmt_ms(ok.p99):>9}{fmt_ms(report.rejected.p99):>9}"
                f"{fmt_ms(result.liveness.latency().p99):>10}  {fmt_counts(report.counts)}"
                f"{f' dropped {report.dropped}' if report.dropped else ''}"
            )

    if args.json is not None:
        figures |= {
            "soak": soak.summary(),
            "errors": errors,
            "rss_mib": [(round(t, 1), round(r / MIB, 2)) for t, r in sampler.samples],
            "rss_growth": growth,
            "rss_trend_mib_per_min": slope,
            "steps": [{"multiple": m, **r.summary()} for m, r in steps],
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
