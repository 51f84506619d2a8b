"""Soak profile: a constant, moderate load on both default models for a long time.

Each user sends ``--user-rps`` (2) requests a second whatever the latency (paced, not closed
loop, so a slow server does not lighten its own load): three in four to digits (batch-1 infer,
score of 1-4 digits, batch-8 binary infer), one in four a /score of one real fortune text to
fortune-topics (texts from surety_kit.payloads). 16 users make 32 requests/s, about 3% of what
one 2-core replica sustains on digits and 15% on fortune-topics (docs/benchmarks.md): room to
watch memory, latency and errors over time rather than capacity.

    locust -f load_tests/soak_profile.py --headless -u 16 -r 4 -t 30m -H http://127.0.0.1:8000 \\
        --csv soak --csv-full-history --exit-code-on-error 1

--users and --run-time set the load and the duration; ``--exclude-tags text`` leaves
fortune-topics out (a repository without it), ``--tags text`` sends only fortunes. Watch the
server's own side meanwhile: its RSS, ``surety_inflight_requests`` and the latency histograms
(docs/deployment.md, Metrics and dashboards).
"""

from __future__ import annotations

from typing import Any

import surety_calls
from locust import FastHttpUser, events, tag, task
from locust.user.wait_time import constant_throughput

from surety_kit.payloads import (
    DIGITS,
    FORTUNE_TOPICS,
    JSON,
    RANDOM,
    digits_json,
    fortune_json,
)


# Locust leaves EventHook.add_listener unannotated.
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--user-rps", type=float, default=2.0, help="requests per second of each user (paced)"
    )


class SoakUser(FastHttpUser):
    """A paced client of both models."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        rate = options.user_rps if options is not None else 2.0
        self._pacing = constant_throughput(rate)

    def wait_time(self) -> float:
        return self._pacing(self)

    @tag("digits")
    @task(4)
    def digits_infer(self) -> None:
        self.client.post(
            f"/v2/models/{DIGITS}/infer", data=digits_json(1), headers=JSON, name="digits infer [1]"
        )

    @tag("digits")
    @task(1)
    def digits_score(self) -> None:
        body = digits_json(RANDOM.randint(1, 4), parameters={"temperature": RANDOM.uniform(0.5, 4)})
        self.client.post(
            f"/v2/models/{DIGITS}/score", data=body, headers=JSON, name="digits score [1-4]"
        )

    @tag("digits")
    @task(1)
    def digits_infer_binary(self) -> None:
        surety_calls.infer_binary(self.client, DIGITS, 8, "digits infer binary [8]")

    @tag("text")
    @task(2)
    def fortune_score(self) -> None:
        surety_calls.score(self.client, FORTUNE_TOPICS, fortune_json(1), "fortune-topics score [1]")
