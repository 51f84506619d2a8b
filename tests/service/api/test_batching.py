"""Dynamic batching under 32 concurrent clients: everyone gets their own answer, in order, and
bad requests fail alone without poisoning the batches they would have shared."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from surety_kit.payloads import image_request
from tests.service.helpers import run_direct

pytestmark = pytest.mark.model

CLIENTS = 32
ROUNDS = 4


def test_concurrent_clients_each_get_their_own_answer(server, direct, images):
    def client_loop(index: int) -> list[tuple[str, np.ndarray, float, Any]]:
        seen = []
        with httpx.Client(base_url=server, timeout=60) as http:
            for round_ in range(ROUNDS):
                # Different rows, batch sizes (1..3) and temperatures per client and round.
                start = (index * ROUNDS + round_) % (len(images) - 3)
                batch = images[start : start + 1 + (index + round_) % 3]
                temperature = 1.0 + (index % 4)
                if round_ % 2:
                    request = image_request(batch, parameters={"temperature": temperature})
                    body = http.post("/v2/models/digits/score", json=request).json()
                    seen.append(("score", batch, temperature, body))
                else:
                    body = http.post("/v2/models/digits/infer", json=image_request(batch)).json()
                    seen.append(("infer", batch, 1.0, body))
        return seen

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for seen in pool.map(client_loop, range(CLIENTS)) for r in seen]

    assert len(results) == CLIENTS * ROUNDS
    for kind, batch, temperature, body in results:
        out = {o["name"]: np.array(o["data"]) for o in body["outputs"]}
        expected = run_direct(direct, batch, scale=1.0 / temperature)
        np.testing.assert_allclose(
            out["probabilities"].reshape(len(batch), 10), expected["probabilities"], atol=1e-6
        )
        if kind == "infer":
            np.testing.assert_allclose(
                out["block1_features"].reshape(len(batch), 32),
                expected["block1_features"],
                atol=1e-5,
            )


def test_batches_are_merged_under_load(client, server, images):
    def scrape_batches() -> tuple[float, float]:
        text = client.get("/metrics").text
        lines = dict(
            line.rsplit(" ", 1)
            for line in text.splitlines()
            if line.startswith("surety_batch_size_") and 'model="digits"' in line
        )
        return (
            float(lines['surety_batch_size_count{model="digits"}']),
            float(lines['surety_batch_size_sum{model="digits"}']),
        )

    runs_before, rows_before = scrape_batches()

    def one(index: int) -> int:
        with httpx.Client(base_url=server, timeout=60) as http:
            for _ in range(8):
                http.post("/v2/models/digits/infer", json=image_request(images[index : index + 1]))
        return index

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(CLIENTS)))
    runs, rows = scrape_batches()
    assert rows - rows_before == CLIENTS * 8
    # Merging happened: fewer ORT runs than requests.
    assert runs - runs_before < CLIENTS * 8


def test_bad_requests_do_not_poison_their_neighbours(server, direct, images):
    def one(index: int) -> tuple[int, int, Any]:
        batch = images[index : index + 1]
        request = image_request(batch)
        if index % 3 == 0:  # out of range: rejected before it can join a batch
            request["inputs"][0]["data"] = [99.0] * 64
        with httpx.Client(base_url=server, timeout=60) as http:
            response = http.post("/v2/models/digits/infer", json=request)
        return index, response.status_code, response.json()

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(one, range(CLIENTS)))
    for index, status, body in answers:
        if index % 3 == 0:
            assert status == 400
            assert "must lie in" in body["error"]
        else:
            assert status == 200
            logits = np.array(body["outputs"][1]["data"]).reshape(1, 10)
            np.testing.assert_allclose(
                logits, run_direct(direct, images[index : index + 1])["logits"], atol=1e-5
            )
