"""Locust load for the digits model: OIP infer (JSON and binary) and score with temperature.

Payloads are real digits from scikit-learn's bundled set (no download), built by the kit
(surety_kit.payloads), which the capacity and soak profiles share.

    locust -f load_tests/locustfile.py --headless -u 8 -r 8 -t 15s -H http://127.0.0.1:8000
"""

from __future__ import annotations

import surety_calls
from locust import FastHttpUser, constant, task

from surety_kit.payloads import DIGITS, JSON, RANDOM, digits_json

MODEL = DIGITS


class DigitsUser(FastHttpUser):
    """A closed-loop client: one request after another, no think time."""

    wait_time = constant(0)

    @task(4)
    def infer_one(self) -> None:
        """Batch-1 JSON infer, the commonest online call."""
        self.client.post(
            f"/v2/models/{MODEL}/infer", data=digits_json(1), headers=JSON, name="infer [1]"
        )

    @task(2)
    def score(self) -> None:
        """Score a few digits at a random temperature."""
        body = digits_json(RANDOM.randint(1, 4), parameters={"temperature": RANDOM.uniform(0.5, 4)})
        surety_calls.score(self.client, MODEL, body, "score [1-4]")

    @task(1)
    def infer_binary(self) -> None:
        """Batch-8 infer through the binary tensor extension."""
        surety_calls.infer_binary(self.client, MODEL, 8, "infer binary [8]")
