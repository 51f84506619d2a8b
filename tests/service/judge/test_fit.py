"""surety fit-judge's pipeline on a tiny exported judge: logits extracted once and cached, every
method fitted, the best on validation written into the graph, which then serves exactly the
scores the fit measured; labels a layer encodes are found."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from surety_serving.export.judge import JudgePrompt, export_judge
from surety_serving.judge.extract import CACHE_DIR, layer_logits
from surety_serving.judge.fit import FIT_RECORD, METHODS, StsbSample, fit_judge
from surety_serving.judge.inputs import JudgeInputs
from surety_serving.judge.lager import append_constant_layer, center_logits, expected_score
from surety_serving.runtime.config import load_config
from surety_serving.runtime.session import session_options
from surety_serving.tasks.judge import JudgeConfig
from tests.service.judge.tinylm import build_tiny_llama, tokenizer_words
from tests.tiers import model_fixture

pytestmark = pytest.mark.model

USER = "Sentence A : {text_a} . Sentence B : {text_b} . Rate how"


@model_fixture(scope="module")
def judge(tmp_path_factory) -> Path:
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), layers=2)
    root = tmp_path_factory.mktemp("repo")
    prompt = JudgePrompt(user=USER, system="You are a judge", max_prompt_tokens=64)
    return export_judge(model, root, "tiny", prompt=prompt).model_root


def rows(count: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    words = tokenizer_words()
    return [
        {
            "text_a": " ".join(rng.choice(words, size=rng.integers(2, 8))),
            "text_b": " ".join(rng.choice(words, size=rng.integers(2, 8))),
        }
        for _ in range(count)
    ]


def test_logits_are_extracted_once(judge, caplog):
    caplog.set_level(logging.INFO, logger="surety_serving.judge")
    sample = rows(12, seed=1)
    first = layer_logits(judge, sample)
    again = layer_logits(judge, sample)
    np.testing.assert_array_equal(first, again)
    assert "from" in caplog.messages[-1] and CACHE_DIR in caplog.messages[-1]
    assert len(list((judge / CACHE_DIR).glob("*.npy"))) >= 1
    # The same prompts through the served encoding, one at a time, give the same logits.
    config = load_config(judge / "config.yaml", JudgeConfig)
    assert config.judge is not None
    inputs = JudgeInputs(config.judge, judge / "1")
    session = ort.InferenceSession(
        str(judge / "1" / "model.onnx"), session_options(1), ["CPUExecutionProvider"]
    )
    from surety_serving.protocol.types import Tensor

    for i, row in enumerate(sample[:3]):
        fields = {
            name: Tensor(name, "BYTES", np.array([row[name].encode()], dtype=object))
            for name in row
        }
        (alone,) = session.run(["layer_logits"], inputs(fields).feeds)
        np.testing.assert_allclose(alone[0], first[i], atol=1e-4)


def test_the_best_method_on_validation_is_written_and_served(judge):
    sample_rows = rows(120, seed=2)
    z = layer_logits(judge, sample_rows).astype(np.float64)
    # Labels that one layer's centred logits carry, with a sign LAGER's weights cannot take.
    centred = center_logits(z)
    signal = centred[:, 1, 0] - centred[:, 1, 4]
    labels = 3 - 2 * np.tanh(signal / signal.std())
    sample = StsbSample(sample_rows, labels, "synthetic")
    record = fit_judge(judge, sample)
    assert set(record["validation_spearman"]) == {*METHODS, "escore_final_layer"}
    assert record["method"] in ("signed_layer", "signed_layer_score", "probe")
    chosen = record["validation_spearman"][record["method"]]
    assert chosen > record["validation_spearman"]["uniform"] + 0.2
    assert chosen == max(record["validation_spearman"][m] for m in METHODS)
    assert json.loads((judge / FIT_RECORD).read_text())["method"] == record["method"]
    export = json.loads((judge / "export.json").read_text())
    assert export["layer_weights"]["fitted"] is True

    # The graph now answers what the fit measured.
    session = ort.InferenceSession(
        str(judge / "1" / "model.onnx"), session_options(1), ["CPUExecutionProvider"]
    )
    weights = next(
        np.asarray(t) for t in _initialisers(judge / "1" / "model.onnx", "layer_weights")
    )
    config = load_config(judge / "config.yaml", JudgeConfig)
    assert config.judge is not None
    inputs = JudgeInputs(config.judge, judge / "1")
    from surety_serving.protocol.types import Tensor

    row = sample_rows[0]
    fields = {
        name: Tensor(name, "BYTES", np.array([row[name].encode()], dtype=object)) for name in row
    }
    served, logits = session.run(["expected_score", "layer_logits"], inputs(fields).feeds)
    logits = logits.astype(np.float64)
    if record["centered"]:
        logits = center_logits(logits)
    if record["constant_layer"]:
        logits = append_constant_layer(logits)
    want, _ = expected_score(logits, weights, config.judge.score_values)
    np.testing.assert_allclose(served, want, atol=1e-4)


def _initialisers(path: Path, name: str) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name]
