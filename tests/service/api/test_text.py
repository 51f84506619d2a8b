"""Text models over HTTP, against a real server on the tiny exported classifier: served answers
equal offline ones, input errors are clean 400s, truncation is reported, merged batches of
different lengths answer as requests run one by one, and temperature works."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from surety_serving import kernels
from surety_serving.export.classifier import ExportResult
from surety_serving.export.encoder import EncodedBatch
from tests.service import textmodel
from tests.service.textmodel import binary_text_request, text_request

pytestmark = pytest.mark.model

SCORE = f"/v2/models/{textmodel.NAME}/score"
INFER = f"/v2/models/{textmodel.NAME}/infer"


def outputs(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def offline(result: ExportResult, texts: list[str]) -> dict[str, np.ndarray]:
    """The export's own model run outside the server: its tokenizer, a plain ORT session."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    session = ort.InferenceSession(
        str(result.model_path), options, providers=["CPUExecutionProvider"]
    )
    batch = EncodedBatch.encode(Tokenizer.from_file(str(result.tokenizer_path)), texts)
    names = [o.name for o in session.get_outputs()]
    values = session.run(
        names,
        {
            "input_ids": batch.input_ids.numpy(),
            "attention_mask": batch.attention_mask.numpy(),
            "scale": np.ones((len(texts), 1), dtype=np.float32),
        },
    )
    return dict(zip(names, values, strict=True))


def test_metadata_names_the_text_input(text_client: httpx.Client) -> None:
    metadata = text_client.get(f"/v2/models/{textmodel.NAME}").json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["versions"] == [str(textmodel.VERSION)]


def test_served_accuracy_equals_offline_accuracy(
    text_client: httpx.Client, text_export: ExportResult
) -> None:
    examples = textmodel.test_examples(text_export)
    texts = [e.text for e in examples]
    served: list[str] = []
    for start in range(0, len(texts), 16):  # max_batch_size is 32
        served += outputs(text_client.post(SCORE, json=text_request(texts[start : start + 16])))[
            "predicted_label"
        ]["data"]
    expected = offline(text_export, texts)["probabilities"].argmax(axis=1)
    assert served == [text_export.labels[i] for i in expected]  # row by row
    accuracy = np.mean([label == e.label for label, e in zip(served, examples, strict=True)])
    assert accuracy == pytest.approx(text_export.test_accuracy, abs=1e-9)


def test_score_temperature_divides_the_logits(text_client: httpx.Client) -> None:
    texts = ["The kernel panicked after the upgrade.", "Eat your vegetables."]
    logits = np.array(
        outputs(text_client.post(INFER, json=text_request(texts)))["logits"]["data"]
    ).reshape(2, -1)
    for temperature in (0.5, 3.0):
        response = text_client.post(
            SCORE, json=text_request(texts, parameters={"temperature": temperature})
        )
        probabilities = np.array(outputs(response)["probabilities"]["data"]).reshape(2, -1)
        scaled = logits / temperature
        expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        assert response.json()["parameters"] == {"temperature": temperature}


def test_a_long_text_is_truncated_and_reported(
    text_client: httpx.Client, text_export: ExportResult
) -> None:
    long = "The compiler rejected the program again. " * 40  # far past 64 tokens
    response = text_client.post(SCORE, json=text_request(["Beam me up.", long, long[:90]]))
    outputs(response)
    assert response.json()["parameters"] == {
        "temperature": 1.0,
        "truncated": 1,
        "truncated_rows": "1",
    }
    # The served answer is the model's answer on the first max_length tokens.
    (served,) = outputs(text_client.post(INFER, json=text_request([long])))["logits"]["data"][:1]
    cut = offline(text_export, [long])["logits"][0, 0]
    assert served == pytest.approx(float(cut), abs=1e-4)


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        (text_request([""]), "input 'text' row 0 is empty"),
        (text_request(["fine", "   \n"]), "input 'text' row 1 is empty"),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.5]}]},
            "input 'text' must be BYTES (text), got FP32",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]},
            "input 'text' must have shape [batch], got [1, 1]",
        ),
        (text_request(["a"] * 33), "batch of 33 rows exceeds max_batch_size 32"),
        (text_request([]), "the batch is empty"),
        (text_request(["a"], parameters={"temperature": 0}), "'temperature' must be"),
        ({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "txt"),
    ],
    ids=["empty", "whitespace", "fp32", "2d", "too-many-rows", "no-rows", "temperature", "name"],
)
def test_bad_text_input_is_a_400_naming_the_problem(
    text_client: httpx.Client, request_body: dict[str, Any], fragment: str
) -> None:
    response = text_client.post(SCORE, json=request_body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_non_utf8_bytes_are_a_400(text_client: httpx.Client) -> None:
    body, headers = binary_text_request([b"fine", b"caf\xe9 latin-1"])
    response = text_client.post(SCORE, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("input 'text' row 1 is not valid UTF-8")
    # JSON cannot carry raw bytes; a lone surrogate escape is the nearest thing and is refused.
    lone = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["\\ud800"]}]}'
    response = text_client.post(SCORE, content=lone, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "error" in response.json()
    # Valid UTF-8 through the binary extension is served.
    body, headers = binary_text_request(["café au lait, s'il vous plaît".encode()])
    assert text_client.post(SCORE, content=body, headers=headers).status_code == 200


def test_concurrent_mixed_lengths_answer_as_one_by_one(
    text_client: httpx.Client, text_server: str, text_export: ExportResult
) -> None:
    """Requests merged into padded batches (and bad ones among them) change no answer."""
    pool = [e.text for e in textmodel.test_examples(text_export)]
    texts = [pool[i] if i % 3 else pool[i] + " " + pool[i + 1] * 3 for i in range(24)]
    single = [
        outputs(text_client.post(INFER, json=text_request([t])))["logits"]["data"] for t in texts
    ]

    async def concurrently() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=text_server, timeout=60) as http:
            good = [http.post(INFER, json=text_request([t])) for t in texts]
            pairs = [http.post(INFER, json=text_request([t, t[:20]])) for t in texts[:6]]
            bad = [http.post(INFER, json=text_request(["ok", ""])) for _ in range(4)]
            return list(await asyncio.gather(*good, *pairs, *bad))

    responses = asyncio.run(concurrently())
    for text_single, response in zip(single, responses[: len(texts)], strict=True):
        np.testing.assert_allclose(outputs(response)["logits"]["data"], text_single, atol=1e-4)
    for i, response in enumerate(responses[len(texts) : len(texts) + 6]):
        logits = np.array(outputs(response)["logits"]["data"]).reshape(2, -1)
        np.testing.assert_allclose(logits[0], single[i], atol=1e-4)
    assert all(r.status_code == 400 for r in responses[-4:])
