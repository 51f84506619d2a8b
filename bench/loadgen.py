"""An asyncio HTTP/1.1 load generator for overload and soak measurements of a Surety server.

Offers one load to a running server and prints (or writes as JSON) the figures: per status code
counts and latency percentiles, accepted throughput (200s per second), connection errors, the
liveness probe's latency, and the generator's own CPU time (to tell when the client, not the
server, is the bottleneck). A closed loop of ``--clients`` clients by default, an open loop of
``--rate`` arrivals per second when given.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000 --model digits --clients 1024
    .venv/bin/python bench/loadgen.py --model fortune-topics --rate 20 --duration 60

The library behind it, for bench/overload.py, bench/soak.py and the like:
bench/loadgen_drivers.py (the loads and ``run``), bench/loadgen_report.py (the figures), and the
kit's surety_kit.wire (the HTTP client) and surety_kit.payloads (the requests).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from loadgen_drivers import ClosedLoop, Load, OpenLoop, run
from loadgen_report import print_run

from surety_kit.payloads import DIGITS, FORTUNE_TOPICS, model_requests
from surety_kit.wire import Endpoint


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that start their own ``surety serve``."""
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--timeout-ms", type=int, help="deadline sent in every request (default: the server's)"
    )
    parser.add_argument(
        "--surety",
        type=Path,
        help="the surety executable to serve with (default: the virtualenv's)",
    )
    parser.add_argument("--json", type=Path, help="also write all figures here")


def require_models(repository: Path, models: Sequence[str]) -> None:
    """Exit with a hint unless every model is built in the repository."""
    for model in models:
        if not (repository / model / "config.yaml").is_file():
            raise SystemExit(
                f"{repository / model} is missing: build it with `surety build-defaults`"
            )


def main(argv: Sequence[str] | None = None) -> None:
    """Offer one load to a running server and print (or write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=DIGITS, choices=[DIGITS, FORTUNE_TOPICS])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=16, help="closed loop: clients")
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help="closed loop: resend at once after 429/503 (hostile)",
    )
    parser.add_argument("--rate", type=float, help="open loop: arrivals per second")
    parser.add_argument("--connections", type=int, default=256, help="open loop: connections")
    parser.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    parser.add_argument("--timeout-ms", type=int, help="deadline sent as parameters.timeout_ms")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take after the window",
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    endpoint = Endpoint.parse(args.url)
    requests = model_requests(endpoint, args.model, timeout_ms=args.timeout_ms)
    load: Load
    if args.rate is not None:
        load = OpenLoop(
            f"{args.model} open {args.rate:g}/s",
            requests,
            args.rate,
            args.connections,
            args.arrivals,
        )
    else:
        mode = " ignore-RA" if args.ignore_retry_after else ""
        load = ClosedLoop(
            f"{args.model} x{args.clients}{mode}", requests, args.clients, args.ignore_retry_after
        )
    result = run(endpoint, [load], duration=args.duration, warmup=args.warmup, grace=args.grace)
    print_run(result, f"{args.url}, {args.duration:g} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result.summary(), indent=2) + "\n")


if __name__ == "__main__":
    main()
