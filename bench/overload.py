"""Overload benchmark: accepted throughput (goodput), rejection and liveness latency under overload.

Against one ``surety serve`` process on the default repository, for each model, in this order
(every phase after a short warm-up, the server left to drain between phases):

1. 16 closed-loop clients: the rate the model sustains (the reference for goodput);
2. 1,024 clients on ``digits`` / 512 on ``fortune-topics``, honouring ``Retry-After``;
3. the same clients ignoring ``Retry-After`` (hostile hammering), reported separately;

then both models at once: ``digits`` at 16 clients while ``fortune-topics`` is overloaded (does
one model's overload leak into the other's latency?), and both overloaded together.

Goodput = 200s per second at N clients / 200s per second at 16 clients, same model, same
server, same run. Targets (issue 8): goodput ≥ 80%, 429/503 p99 ≤ 50 ms, liveness p99 ≤ 50 ms.
The load generator shares the machine with the server; its CPU share is printed per phase.

    .venv/bin/python bench/overload.py --model-repository model_repository [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from loadgen import add_server_arguments, require_models
from loadgen_drivers import ClosedLoop, Load, run
from loadgen_report import Report, Run, fmt_counts, fmt_ms, print_run

from surety_kit.metrics import settle
from surety_kit.payloads import DIGITS, FORTUNE_TOPICS, model_requests
from surety_kit.server import serve

TARGET_GOODPUT = 0.80
TARGET_REJECTION_P99_MS = 50.0
TARGET_LIVENESS_P99_MS = 50.0


@dataclass(frozen=True)
class Row:
    """One model's figures in one overload phase."""

    scenario: str
    report: Report
    clients: int
    ignore_retry_after: bool
    base_rate: float
    liveness_p99_ms: float
    client_cpu_share: float

    @property
    def goodput_ratio(self) -> float:
        return self.report.goodput / self.base_rate if self.base_rate > 0 else float("nan")

    def targets(self) -> str:
        """Which of the issue's three targets this row meets."""
        rejected = self.report.rejected
        marks = [
            ("goodput", self.goodput_ratio >= TARGET_GOODPUT),
            ("rej", rejected.count == 0 or rejected.p99 <= TARGET_REJECTION_P99_MS),
            ("live", self.liveness_p99_ms <= TARGET_LIVENESS_P99_MS),
        ]
        return " ".join(f"{name}:{'ok' if met else 'MISS'}" for name, met in marks)

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "clients": self.clients,
            "ignore_retry_after": self.ignore_retry_after,
            "base_rate_per_s": round(self.base_rate, 2),
            "goodput_ratio": round(self.goodput_ratio, 4),
            "liveness_p99_ms": round(self.liveness_p99_ms, 2),
            "client_cpu_share": round(self.client_cpu_share, 3),
            "flags": self.report.problems(),
            **self.report.summary(),
        }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    """Run the phases and print one table per phase, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per phase")
    parser.add_argument("--base-clients", type=int, default=16)
    parser.add_argument("--digits-clients", type=int, default=1024)
    parser.add_argument("--fortune-clients", type=int, default=512)
    parser.add_argument(
        "--models", nargs="+", default=[DIGITS, FORTUNE_TOPICS], choices=[DIGITS, FORTUNE_TOPICS]
    )
    parser.add_argument(
        "--retry-after",
        choices=["honour", "ignore", "both"],
        default="both",
        help="how overloading clients treat Retry-After",
    )
    parser.add_argument("--no-mixed", action="store_true", help="skip the both-models phases")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take after a window",
    )
    args = parser.parse_args()

    require_models(args.model_repository, args.models)
    overload_clients = {DIGITS: args.digits_clients, FORTUNE_TOPICS: args.fortune_clients}
    modes = {"honour": [False], "ignore": [True], "both": [False, True]}[args.retry_after]
    print(f"cores {os.cpu_count()}, load average {load_average()} (before the server starts)")

    rows: list[Row] = []
    phases: list[dict[str, Any]] = []
    with serve(args.model_repository, executable=args.surety, timeout=180) as server:
        endpoint = server.endpoint
        payloads = {m: model_requests(endpoint, m, timeout_ms=args.timeout_ms) for m in args.models}

        def phase(title: str, loads: list[Load]) -> Run:
            result = run(
                endpoint, loads, duration=args.duration, warmup=args.warmup, grace=args.grace
            )
            print_run(result, f"{title} ({args.duration:g} s, load average {load_average()})")
            phases.append({"title": title, **result.summary()})
            settle(endpoint.url)
            return result

        def closed(model: str, clients: int, ignore: bool = False) -> ClosedLoop:
            name = f"{model} x{clients}" + (" ignore-RA" if ignore else "")
            return ClosedLoop(name, payloads[model], clients, ignore)

        def add(scenario: str, result: Run, load: ClosedLoop, model: str) -> None:
            rows.append(
                Row(
                    scenario,
                    result.loads[load.name],
                    load.clients,
                    load.ignore_retry_after,
                    base[model],
                    result.liveness.latency().p99,
                    result.client_cpu_share,
                )
            )

        base: dict[str, float] = {}
        base_p99: dict[str, float] = {}
        for model in args.models:
            load = closed(model, args.base_clients)
            result = phase(f"{model}: {args.base_clients} clients (reference)", [load])
            base[model] = result.loads[load.name].goodput
            base_p99[model] = result.loads[load.name].accepted.p99
            add("reference", result, load, model)
            for ignore in modes:
                load = closed(model, overload_clients[model], ignore)
                result = phase(f"{model}: {load.name}", [load])
                add("alone", result, load, model)

        isolation: Report | None = None
        if not args.no_mixed and set(args.models) == {DIGITS, FORTUNE_TOPICS}:
            calm = closed(DIGITS, args.base_clients)
            storm = closed(FORTUNE_TOPICS, overload_clients[FORTUNE_TOPICS])
            result = phase(
                "isolation: digits calm while fortune-topics is overloaded", [calm, storm]
            )
            add("isolation", result, calm, DIGITS)
            add("isolation", result, storm, FORTUNE_TOPICS)
            isolation = result.loads[calm.name]
            for ignore in modes:
                both = [closed(m, overload_clients[m], ignore) for m in (DIGITS, FORTUNE_TOPICS)]
                mode = ", ignoring Retry-After" if ignore else ""
                result = phase(f"both models overloaded{mode}", list(both))
                for load, model in zip(both, (DIGITS, FORTUNE_TOPICS), strict=True):
                    add("both", result, load, model)

    print(
        f"\n== summary: goodput = 200/s at N clients over 200/s at {args.base_clients} "
        "(same model, same run); latencies in ms =="
    )
    print(
        f"{'scenario':<11}{'load':<28}{'200/s@ref':>10}{'200/s':>8}{'goodput':>9}"
        f"{'rej p99':>9}{'200 p99':>9}{'live p99':>10}{'cli CPU':>9}  targets   counts"
    )
    for row in rows:
        r = row.report
        print(
            f"{row.scenario:<11}{r.name:<28}{row.base_rate:10.1f}{r.goodput:8.1f}"
            f"{row.goodput_ratio:9.0%}{fmt_ms(r.rejected.p99):>9}{fmt_ms(r.accepted.p99):>9}"
            f"{fmt_ms(row.liveness_p99_ms):>10}{row.client_cpu_share:9.0%}  {row.targets()}"
            f"  {fmt_counts(r.counts)}"
        )
        for flag in r.problems():
            print(f"{'':11}!! {flag}")
    if isolation is not None:
        calm_report = isolation
        print(
            f"\nisolation: digits at {args.base_clients} clients while fortune-topics is "
            f"overloaded: {calm_report.goodput:.0f}/s = {calm_report.goodput / base[DIGITS]:.0%} "
            f"of its rate alone; 200 p99 {fmt_ms(calm_report.accepted.p99)} ms vs "
            f"{fmt_ms(base_p99[DIGITS])} ms alone"
        )
    print(f"load average at the end {load_average()}")
    if args.json is not None:
        figures = {"rows": [row.summary() for row in rows], "phases": phases, "argv": sys.argv[1:]}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
