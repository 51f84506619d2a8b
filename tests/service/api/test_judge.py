"""POST /judge over HTTP on a tiny random Llama exported in the test: answers equal a direct ORT
run of the same prompts, requests of different lengths merged into one batch (left padded) keep
their own answers, long prompts are cut and reported, bad inputs get 400, non-judges 409."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from surety_kit.server import running_server
from surety_serving.export.judge import JudgePrompt, export_judge
from surety_serving.judge.prompt import encode_prompts, load_tokenizer
from surety_serving.runtime.config import load_config
from surety_serving.runtime.session import session_options
from surety_serving.settings import Settings
from surety_serving.tasks.judge import JudgeConfig
from tests.service.api.test_metrics import scrape, value
from tests.service.judge.tinylm import build_tiny_llama

pytestmark = pytest.mark.model

JUDGE = "tiny-judge"
USER = "Sentence A : {text_a} . Sentence B : {text_b} . Rate how"
MAX_PROMPT_TOKENS = 40
ROWS = [
    {"text_a": "A man is playing a guitar", "text_b": "Stocks fell"},
    {"text_a": "Two dogs run across a wide green field", "text_b": "The committee postponed"},
    {"text_a": "Stocks fell", "text_b": "A man"},
]
LONG = {"text_a": " ".join(["a wide green field"] * 20), "text_b": "Stocks fell"}


def judge_body(rows: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    fields = ("text_a", "text_b")
    inputs = [
        {"name": f, "datatype": "BYTES", "shape": [len(rows)], "data": [r[f] for r in rows]}
        for f in fields
    ]
    return {"inputs": inputs, **extra}


@pytest.fixture(scope="module")
def judge_repository(tmp_path_factory, repository: Path) -> Path:
    """The tiny judge beside a copy of digits (a model that is not a judge)."""
    root = tmp_path_factory.mktemp("judge-repo")
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), layers=2)
    prompt = JudgePrompt(user=USER, system="You are a judge", max_prompt_tokens=MAX_PROMPT_TOKENS)
    export_judge(model, root, JUDGE, prompt=prompt)
    shutil.copytree(repository / "digits", root / "digits")
    return root


@pytest.fixture(scope="module")
def judge_client(judge_repository: Path) -> Iterator[httpx.Client]:
    settings = Settings(model_repository=judge_repository)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def direct(root: Path, rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """The graph's outputs for ``rows``, encoded as the server encodes them, each row alone."""
    config = load_config(root / JUDGE / "config.yaml", JudgeConfig)
    spec = config.judge
    assert spec is not None
    session = ort.InferenceSession(
        str(root / JUDGE / "1" / "model.onnx"), session_options(1), ["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    tokenizer = load_tokenizer(str(root / JUDGE / "1" / spec.tokenizer))
    from surety_serving.judge.inputs import JudgeInputs

    template = JudgeInputs(spec, root / JUDGE / "1").template
    outputs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for row in rows:
        batch = encode_prompts(
            tokenizer, template, [row], max_prompt_tokens=spec.max_prompt_tokens,
            truncate=spec.truncate, pad_token_id=spec.pad_token_id,
        )  # fmt: skip
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        for name, result in zip(names, session.run(names, feeds), strict=True):
            outputs[name].append(result)
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def test_judge_answers_equal_a_direct_run(judge_client, judge_repository):
    got = outputs_of(judge_client.post(f"/v2/models/{JUDGE}/judge", json=judge_body(ROWS)))
    assert list(got) == ["expected_score", "score_probabilities"]
    want = direct(judge_repository, ROWS)
    np.testing.assert_allclose(got["expected_score"], want["expected_score"], atol=1e-4)
    np.testing.assert_allclose(got["score_probabilities"], want["score_probabilities"], atol=1e-4)
    assert got["score_probabilities"].shape == (3, 5)
    np.testing.assert_allclose(got["score_probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert ((got["expected_score"] >= 1) & (got["expected_score"] <= 5)).all()


def test_layer_scores_on_request(judge_client, judge_repository):
    body = judge_body(ROWS[:2], outputs=[{"name": "layer_scores"}, {"name": "expected_score"}])
    got = outputs_of(judge_client.post(f"/v2/models/{JUDGE}/versions/1/judge", json=body))
    assert list(got) == ["layer_scores", "expected_score"]
    assert got["layer_scores"].shape == (2, 3)  # embeddings + 2 layers
    want = direct(judge_repository, ROWS[:2])
    np.testing.assert_allclose(got["layer_scores"], want["layer_scores"], atol=1e-4)


def test_concurrent_requests_of_different_lengths_keep_their_answers(
    judge_client, judge_repository
):
    """Sent together, the single-row requests share batches (left padded to the longest);
    each still gets its own prompt's answer."""
    rows = ROWS * 4
    url = str(judge_client.base_url)

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            path = f"/v2/models/{JUDGE}/judge"
            return await asyncio.gather(*(http.post(path, json=judge_body([r])) for r in rows))

    before = scrape(judge_client)
    responses = asyncio.run(send())
    want = direct(judge_repository, rows)["expected_score"]
    got = np.concatenate([outputs_of(r)["expected_score"] for r in responses])
    np.testing.assert_allclose(got, want, atol=1e-4)
    after = scrape(judge_client)
    runs = value(after, "surety_batch_size_count", model=JUDGE) - value(
        before, "surety_batch_size_count", model=JUDGE
    )
    assert runs < len(rows)  # some requests were merged
    scored = value(after, "surety_judge_score_count", model=JUDGE) - value(
        before, "surety_judge_score_count", model=JUDGE
    )
    assert scored == len(rows)


def test_long_prompts_are_cut_in_the_middle_and_reported(judge_client, judge_repository):
    response = judge_client.post(f"/v2/models/{JUDGE}/judge", json=judge_body([ROWS[0], LONG]))
    parameters = response.json()["parameters"]
    assert parameters["truncated"] == 1
    assert parameters["truncated_rows"] == "1"
    assert int(parameters["truncated_tokens"]) > 0
    want = direct(judge_repository, [ROWS[0], LONG])["expected_score"]
    np.testing.assert_allclose(outputs_of(response)["expected_score"], want, atol=1e-4)


def test_infer_on_a_judge_gives_the_raw_outputs(judge_client):
    got = outputs_of(judge_client.post(f"/v2/models/{JUDGE}/infer", json=judge_body(ROWS[:1])))
    assert got["layer_logits"].shape == (1, 3, 5)
    assert set(got) == {"layer_logits", "expected_score", "score_probabilities", "layer_scores"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": judge_body(ROWS)["inputs"][:1]}, "needs input 'text_b'"),
        (
            {"inputs": [*judge_body(ROWS)["inputs"], {**judge_body(ROWS)["inputs"][0],
                                                      "name": "reference"}]},
            "has no input 'reference'",
        ),
        (
            {"inputs": [judge_body(ROWS)["inputs"][0], judge_body(ROWS[:2])["inputs"][1]]},
            "one row each alike",
        ),
        (judge_body([{"text_a": " ", "text_b": "x"}]), "input 'text_a' row 0 is empty"),
        (
            {"inputs": [{"name": "text_a", "datatype": "FP32", "shape": [1], "data": [1.0]},
                        judge_body(ROWS[:1])["inputs"][1]]},
            "input 'text_a' must be BYTES",
        ),
        (judge_body(ROWS, outputs=[{"name": "logits"}]), "has no output 'logits'"),
    ],
)  # fmt: skip
def test_bad_judge_requests_are_400_naming_the_problem(judge_client, body, message):
    response = judge_client.post(f"/v2/models/{JUDGE}/judge", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_model_that_is_not_a_judge_is_409(judge_client, images):
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64],
                        "data": images[0].tolist()}]}  # fmt: skip
    response = judge_client.post("/v2/models/digits/judge", json=body)
    assert response.status_code == 409
    assert response.json()["error"] == (
        "model 'digits' (task: classifier) does not serve /judge; "
        "it serves /infer, /score, /uncertainty"
    )


def test_server_metadata_lists_the_judge_extension(judge_client):
    assert "judge" in judge_client.get("/v2").json()["extensions"]
