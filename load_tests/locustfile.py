"""Locust load for the digits model: OIP infer (JSON and binary) and score with temperature.

Payloads are real held-out digits from scikit-learn's bundled set (no download).

    locust -f load_tests/locustfile.py --headless -u 8 -r 8 -t 15s -H http://127.0.0.1:8000
"""

from __future__ import annotations

import random

import numpy as np
import orjson
from locust import FastHttpUser, constant, task
from sklearn.datasets import load_digits

MODEL = "digits"
IMAGES = load_digits().data.astype(np.float32)
RANDOM = random.Random(0)


def json_body(rows: int, **extra: object) -> str:
    """An OIP JSON request of ``rows`` random real digits."""
    start = RANDOM.randrange(len(IMAGES) - rows)
    batch = IMAGES[start : start + rows]
    tensor = {"name": "image", "shape": [rows, 64], "datatype": "FP32", "data": batch.ravel()}
    return orjson.dumps({"inputs": [tensor], **extra}, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def binary_body(rows: int) -> tuple[bytes, dict[str, str]]:
    """The same request in the binary tensor extension, probabilities returned binary."""
    start = RANDOM.randrange(len(IMAGES) - rows)
    blob = IMAGES[start : start + rows].tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [rows, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + blob, headers


class DigitsUser(FastHttpUser):
    """A closed-loop client: one request after another, no think time."""

    wait_time = constant(0)

    @task(4)
    def infer_one(self) -> None:
        """Batch-1 JSON infer, the commonest online call."""
        self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=json_body(1),
            headers={"Content-Type": "application/json"},
            name="infer [1]",
        )

    @task(2)
    def score(self) -> None:
        """Score a few digits at a random temperature."""
        body = json_body(RANDOM.randint(1, 4), parameters={"temperature": RANDOM.uniform(0.5, 4)})
        with self.client.post(
            f"/v2/models/{MODEL}/score",
            data=body,
            headers={"Content-Type": "application/json"},
            name="score [1-4]",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and "predicted_label" not in response.text:
                response.failure("no predicted_label in the score response")

    @task(1)
    def infer_binary(self) -> None:
        """Batch-8 infer through the binary tensor extension."""
        body, headers = binary_body(8)
        # FastHttpSession sends bytes as they are; its annotation only names str and dict.
        self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=body,  # type: ignore[arg-type]
            headers=headers,
            name="infer binary [8]",
        )
