"""Locust load for the digits model: OIP infer (JSON and binary) and score with temperature.

Payloads are real held-out digits from scikit-learn's bundled set (no download), built in
surety_payloads.py, which the capacity and soak profiles share.

    locust -f load_tests/locustfile.py --headless -u 8 -r 8 -t 15s -H http://127.0.0.1:8000
"""

from __future__ import annotations

from locust import FastHttpUser, constant, task
from surety_payloads import DIGITS, JSON, RANDOM, digits_binary, digits_json

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
        with self.client.post(
            f"/v2/models/{MODEL}/score",
            data=body,
            headers=JSON,
            name="score [1-4]",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and "predicted_label" not in response.text:
                response.failure("no predicted_label in the score response")

    @task(1)
    def infer_binary(self) -> None:
        """Batch-8 infer through the binary tensor extension."""
        body, headers = digits_binary(8)
        # FastHttpSession sends bytes as they are; its annotation only names str and dict.
        self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=body,  # type: ignore[arg-type]
            headers=headers,
            name="infer binary [8]",
        )
