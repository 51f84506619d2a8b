"""``surety export judge`` on a tiny random Llama: the graph, its parity with torch on
left-padded batches, the logit lens, the LAGER head and its weights, the config it writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from surety_serving import kernels
from surety_serving.cli import main as surety
from surety_serving.export.judge import (
    JudgeExport,
    JudgePrompt,
    ScoreTokenError,
    export_judge,
    validate_score_tokens,
)
from surety_serving.judge.graph import LAYER_WEIGHTS, set_layer_weights
from surety_serving.judge.prompt import (
    EncodedPrompts,
    PromptTooLongError,
    encode_prompts,
    load_tokenizer,
)
from surety_serving.kernels.reference import expected_score
from surety_serving.optimize.options import OptimizeOptions
from surety_serving.runtime.config import load_config
from surety_serving.runtime.session import session_options
from surety_serving.tasks.judge import JudgeConfig
from tests.service.judge.tinylm import build_tiny_llama
from tests.tiers import model_fixture

pytestmark = pytest.mark.model

LAYERS = 2
#: ``--attention sparse`` (dense pattern) with the default drift tolerance; the softmaxes stay.
SPARSE = OptimizeOptions(attention="sparse", softmax=False)
SCORES = ("1", "2", "3", "4", "5")
USER = "Sentence A : {text_a} . Sentence B : {text_b} . Rate how"
ROWS = [
    {"text_a": "A man is playing a guitar", "text_b": "Stocks fell"},
    {
        "text_a": "Two dogs run across a wide green field , chasing a red ball",
        "text_b": "The committee postponed its vote on the new budget until spring",
    },
    {"text_a": "Stocks fell", "text_b": "A man"},
]


@model_fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), layers=LAYERS)


def _export(model_dir: Path, out: Path, lens: str, **prompt: Any) -> JudgeExport:
    return export_judge(
        model_dir,
        out,
        f"judge-{lens}",
        prompt=JudgePrompt(user=USER, system="You are a judge", **prompt),
        lens=lens,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module", params=["raw", "normed"])
def exported(request, tiny_model, tmp_path_factory):
    return _export(tiny_model, tmp_path_factory.mktemp("repo"), request.param)


@pytest.fixture(scope="module")
def torch_model(tiny_model):
    """A fresh instance, never exported: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(tiny_model), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def _encode(
    result: JudgeExport,
    rows: Sequence[Mapping[str, str]] = ROWS,
    max_prompt_tokens: int | None = None,
) -> EncodedPrompts:
    judge = result.metadata["judge"]
    return encode_prompts(
        load_tokenizer(str(result.tokenizer_path)),
        result.template,
        rows,
        max_prompt_tokens=max_prompt_tokens or judge["max_prompt_tokens"],
        truncate=judge["truncate"],
        pad_token_id=judge["pad_token_id"],
    )


def _run(result: JudgeExport, batch: EncodedPrompts) -> dict[str, np.ndarray]:
    session = _session(result.model_path)
    names = [o.name for o in session.get_outputs()]
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    return dict(zip(names, session.run(names, feeds), strict=True))


def _torch_layer_logits(
    model: Any, ids: list[int], token_ids: list[int], lens: str
) -> tuple[np.ndarray, np.ndarray]:
    """LAGER's layer logits of one prompt alone, straight from transformers' outputs."""
    import torch

    with torch.no_grad():
        output = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        rows = []
        for state in output.hidden_states[:-1]:
            last = state[0, -1]
            if lens == "normed":
                last = model.model.norm(last)
            rows.append(model.lm_head.weight[token_ids] @ last)
        rows.append(output.logits[0, -1, token_ids])
        return torch.stack(rows).numpy(), output.logits[0, -1].numpy()


def test_writes_a_servable_entry(exported):
    root = exported.model_root
    assert (root / "1" / "model.onnx").is_file() and (root / "1" / "tokenizer.json").is_file()
    config = load_config(root / "config.yaml", JudgeConfig)
    assert config.task == "judge" and config.judge is not None
    assert config.judge.fields == ["text_a", "text_b"]
    assert [i.name for i in config.inputs] == ["text_a", "text_b"]
    assert config.judge.score_token_ids == list(exported.score_token_ids)
    assert config.judge.num_layers == LAYERS
    assert config.judge.prompt.assistant_prefix == "Score: "
    shapes = {o.name: o.shape for o in config.outputs}
    assert shapes == {
        "layer_logits": [-1, LAYERS + 1, 5],
        "expected_score": [-1],
        "score_probabilities": [-1, 5],
        "layer_scores": [-1, LAYERS + 1],
    }
    model = onnx.load(str(exported.model_path))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    ops = [(n.domain, n.op_type) for n in model.graph.node if n.domain == kernels.DOMAIN]
    assert ops == [(kernels.DOMAIN, "ExpectedScore")]
    weights = next(t for t in model.graph.initializer if t.name == LAYER_WEIGHTS)
    np.testing.assert_allclose(onnx.numpy_helper.to_array(weights), 1 / (LAYERS + 1))
    assert exported.parity_max_error is not None and exported.parity_max_error < 1e-4


def test_left_padded_batches_match_torch_per_prompt(exported, torch_model):
    lens = exported.metadata["judge"]["lens"]
    for rows in (ROWS, ROWS[::-1][:2], ROWS[1:2]):
        batch = _encode(exported, rows)
        got = _run(exported, batch)["layer_logits"]
        assert got.shape == (len(rows), LAYERS + 1, 5)
        for row in range(len(rows)):
            ids = batch.input_ids[row][batch.attention_mask[row] == 1].tolist()
            want, _ = _torch_layer_logits(torch_model, ids, list(exported.score_token_ids), lens)
            np.testing.assert_allclose(got[row], want, atol=1e-4, rtol=0)
    # The rows really were padded to different lengths.
    assert len(set(_encode(exported).lengths.tolist())) == len(ROWS)


def test_last_layer_is_the_models_own_logits(exported, torch_model):
    """The logit lens: lm_head on the final hidden state reproduces the model's logits."""
    import torch

    batch = _encode(exported)
    got = _run(exported, batch)["layer_logits"]
    for row in range(len(ROWS)):
        ids = batch.input_ids[row][batch.attention_mask[row] == 1].tolist()
        with torch.no_grad():
            output = torch_model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            final = torch_model.model.norm(output.hidden_states[-1][0, -1])
            lens = torch_model.lm_head(final)
        np.testing.assert_allclose(lens.numpy(), output.logits[0, -1].numpy(), atol=1e-5)
        want = output.logits[0, -1, list(exported.score_token_ids)].numpy()
        np.testing.assert_allclose(got[row, -1], want, atol=1e-4)
    assert exported.logit_lens_error is not None and exported.logit_lens_error < 1e-4


def test_head_outputs_match_the_reference(exported):
    out = _run(exported, _encode(exported))
    logits = out["layer_logits"]
    values = np.arange(1, 6, dtype=np.float64)
    score, probabilities = expected_score(logits, np.full(LAYERS + 1, 1 / (LAYERS + 1)), values)
    np.testing.assert_allclose(out["expected_score"], score, atol=1e-5)
    np.testing.assert_allclose(out["score_probabilities"], probabilities, atol=1e-6)
    per_layer = np.exp(logits - logits.max(axis=-1, keepdims=True))
    per_layer /= per_layer.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(out["layer_scores"], per_layer @ values, atol=1e-5)
    assert ((out["expected_score"] >= 1) & (out["expected_score"] <= 5)).all()


def test_lens_variants_differ_only_before_the_last_layer(tiny_model, tmp_path):
    raw, normed = (_export(tiny_model, tmp_path / lens, lens) for lens in ("raw", "normed"))
    batch = _encode(raw)
    a, b = (_run(result, batch)["layer_logits"] for result in (raw, normed))
    np.testing.assert_allclose(a[:, -1], b[:, -1], atol=1e-6)
    assert np.abs(a[:, :-1] - b[:, :-1]).max() > 1e-2


def test_multi_token_score_is_rejected(tiny_model, tmp_path):
    with pytest.raises(ScoreTokenError, match=r"score token '4\.5' is 3 tokens"):
        _export(tiny_model, tmp_path, "raw", score_tokens=("1", "4.5"), score_values=(1, 4.5))
    assert not (tmp_path / "judge-raw").exists()


def test_prompt_limits_are_checked_before_anything_is_written(tiny_model, tmp_path):
    with pytest.raises(PromptTooLongError, match="max_prompt_tokens is 10"):
        _export(tiny_model, tmp_path, "raw", max_prompt_tokens=10)
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        _export(tiny_model, tmp_path, "raw", max_prompt_tokens=513)
    assert not (tmp_path / "judge-raw").exists()


def test_score_tokens_sharing_an_id_are_rejected(exported):
    # Both unknown to the vocabulary: one [UNK] id for two scores.
    tokenizer = load_tokenizer(str(exported.tokenizer_path))
    with pytest.raises(ScoreTokenError, match="share ids"):
        validate_score_tokens(tokenizer, exported.template, ["seven", "eight"], 10_000)
    with pytest.raises(ScoreTokenError, match="outside lm_head"):
        validate_score_tokens(tokenizer, exported.template, ["1"], 3)


def test_long_prompts_are_cut_in_the_middle_and_still_run(exported, torch_model):
    rows = [{"text_a": " ".join([ROWS[1]["text_a"]] * 20), "text_b": "Stocks fell"}, ROWS[0]]
    full = _encode(exported, rows, max_prompt_tokens=10_000)
    limit = int(full.lengths[0]) - 50
    batch = _encode(exported, rows, max_prompt_tokens=limit)
    assert batch.lengths[0] <= limit and batch.truncated[0] >= 50 and batch.truncated[1] == 0
    got = _run(exported, batch)["layer_logits"]
    ids = batch.input_ids[0][batch.attention_mask[0] == 1].tolist()
    lens = exported.metadata["judge"]["lens"]
    want, _ = _torch_layer_logits(torch_model, ids, list(exported.score_token_ids), lens)
    np.testing.assert_allclose(got[0], want, atol=1e-4)


def test_set_layer_weights_per_layer(exported, tmp_path):
    weights = np.array([0.0, 0.25, 0.75], dtype=np.float32)
    batch = _encode(exported)
    before = _run(exported, batch)
    set_layer_weights(exported.model_path, weights)
    try:
        after = _run(exported, batch)
        score, probabilities = expected_score(after["layer_logits"], weights, np.arange(1, 6))
        np.testing.assert_allclose(after["expected_score"], score, atol=1e-5)
        np.testing.assert_allclose(after["score_probabilities"], probabilities, atol=1e-6)
        np.testing.assert_array_equal(after["layer_logits"], before["layer_logits"])
        assert not np.allclose(after["expected_score"], before["expected_score"])
        with pytest.raises(ValueError, match=r"expected \[3\] or \[3, 5\]"):
            set_layer_weights(exported.model_path, np.ones(4))
        with pytest.raises(ValueError, match="finite"):
            set_layer_weights(exported.model_path, [np.nan, 0, 1])
    finally:
        set_layer_weights(exported.model_path, np.full(LAYERS + 1, 1 / (LAYERS + 1)))


def test_set_layer_weights_per_layer_and_token(exported):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(LAYERS + 1, 5)).astype(np.float32)
    batch = _encode(exported)
    set_layer_weights(exported.model_path, weights)
    try:
        out = _run(exported, batch)
        aggregated = np.einsum("blk,lk->bk", out["layer_logits"].astype(np.float64), weights)
        probabilities = np.exp(aggregated - aggregated.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(out["score_probabilities"], probabilities, atol=1e-5)
        np.testing.assert_allclose(
            out["expected_score"], probabilities @ np.arange(1, 6), atol=1e-5
        )
    finally:
        set_layer_weights(exported.model_path, np.full(LAYERS + 1, 1 / (LAYERS + 1)))


def test_cli_writes_the_entry_and_refuses_to_overwrite(tiny_model, tmp_path, capsys):
    args = ["export", "judge", "--model", str(tiny_model), "--name", "tiny"]
    args += ["--model-repository", str(tmp_path), "--lens", "normed", "--max-prompt-tokens", "64"]
    assert surety(args) == 0
    config = load_config(tmp_path / "tiny" / "config.yaml", JudgeConfig)
    assert config.judge is not None and config.judge.lens == "normed"
    assert config.judge.max_prompt_tokens == 64
    assert "written to" in capsys.readouterr().out
    assert surety(args) == 1
    assert "--force replaces it" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # A second version joins the entry; --force replaces version 1 and the config, not version 2.
    assert surety([*args, "--version", "2", "--lens", "raw"]) == 0
    assert load_config(tmp_path / "tiny" / "config.yaml", JudgeConfig).judge.lens == "raw"
    version_2 = (tmp_path / "tiny" / "2" / "model.onnx").stat().st_mtime_ns
    assert surety([*args, "--force"]) == 0
    assert load_config(tmp_path / "tiny" / "config.yaml", JudgeConfig).judge.lens == "normed"
    assert (tmp_path / "tiny" / "2" / "model.onnx").stat().st_mtime_ns == version_2
    assert (tmp_path / "tiny" / "1" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def sparse_exported(tiny_model, tmp_path_factory) -> JudgeExport:
    """The raw-lens judge with every layer's attention on SparseAttention (dense pattern)."""
    return export_judge(
        tiny_model,
        tmp_path_factory.mktemp("sparse"),
        "judge-sparse",
        prompt=JudgePrompt(user=USER, system="You are a judge"),
        optimize=SPARSE,
    )


def _attention_nodes(path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == "SparseAttention"]


def test_sparse_attention_is_causal_with_the_key_padding_in_every_layer(sparse_exported):
    model = onnx.load(str(sparse_exported.model_path))
    attention = _attention_nodes(sparse_exported.model_path)
    assert len(attention) == LAYERS  # every layer's attention, none left dense
    for node in attention:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert node.domain == kernels.DOMAIN and attributes["causal"] == 1
        assert len(node.input) == 4  # Q, K, V and the key-padding row from attention_mask
    # The only Softmax left is the head's, over the score tokens.
    assert [n.name for n in model.graph.node if n.op_type == "Softmax"] == ["layer_softmax"]
    record = sparse_exported.metadata["optimize"]
    assert record["options"] == SPARSE.record()
    assert len(record["replaced"]) == LAYERS
    assert all("causal from" in change["detail"] for change in record["replaced"])
    assert max(record["drift"].values()) <= SPARSE.tolerance


def test_sparse_judge_matches_torch_on_left_padded_batches(sparse_exported, torch_model):
    """Batches of different lengths, each row left padded to its own depth, against the prompt
    run alone in torch: a query seeing a later key, or padding, would be off by far more."""
    for rows in (ROWS, ROWS[::-1][:2], ROWS[1:2]):
        batch = _encode(sparse_exported, rows)
        got = _run(sparse_exported, batch)
        for row in range(len(rows)):
            ids = batch.input_ids[row][batch.attention_mask[row] == 1].tolist()
            want, _ = _torch_layer_logits(
                torch_model, ids, list(sparse_exported.score_token_ids), "raw"
            )
            np.testing.assert_allclose(got["layer_logits"][row], want, atol=SPARSE.tolerance)
        score, _ = expected_score(
            got["layer_logits"], np.full(LAYERS + 1, 1 / (LAYERS + 1)), np.arange(1.0, 6.0)
        )
        np.testing.assert_allclose(got["expected_score"], score, atol=1e-5)
    assert len(set(_encode(sparse_exported).lengths.tolist())) == len(ROWS)


def test_cli_sparse_attention_records_the_options(tiny_model, tmp_path, capsys):
    import yaml

    args = ["export", "judge", "--model", str(tiny_model), "--name", "tiny"]
    args += ["--model-repository", str(tmp_path), "--attention", "sparse"]
    args += ["--attention-tolerance", "1e-4", "--estimator", "none"]
    assert surety(args) == 0, capsys.readouterr().err
    root = tmp_path / "tiny"
    written = yaml.safe_load((root / "config.yaml").read_text("utf-8"))
    assert written["optimize"] == SPARSE.record()
    config = load_config(root / "config.yaml", JudgeConfig)
    assert config.optimize is not None and config.optimize["attention"] == "sparse"
    attention = _attention_nodes(root / "1" / "model.onnx")
    assert len(attention) == LAYERS


def test_cli_a_sparse_pattern_that_drifts_is_refused(tiny_model, tmp_path, capsys):
    """The pass's own check against the dense graph still runs: a band of 3 keys moves the
    layer logits far past 1e-6, and nothing is written."""
    args = ["export", "judge", "--model", str(tiny_model), "--name", "tiny"]
    args += ["--model-repository", str(tmp_path), "--attention", "sparse", "--pattern", "band"]
    args += ["--window", "2", "--attention-tolerance", "1e-6"]
    assert surety(args) == 1
    err = capsys.readouterr().err
    assert "drift past the tolerance 1e-06" in err
    assert "nothing written" in err and not (tmp_path / "tiny").exists()


def test_config_refuses_inconsistent_judge_sections(exported):
    import yaml
    from pydantic import ValidationError

    from surety_serving.runtime.config import ModelConfig

    good = yaml.safe_load((exported.model_root / "config.yaml").read_text())
    ModelConfig.model_validate(good)
    cases: dict[str, Callable[[dict[str, Any]], object]] = {
        "judge\n  Field required": lambda c: c.pop("judge"),
        "truncate names fields": lambda c: c["judge"].update(truncate=["nope"]),
        "differ in length": lambda c: c["judge"].update(score_values=[1, 2]),
        "names {text_b} 0 times": lambda c: c["judge"]["prompt"].update(user="{text_a}"),
        "needs an input BYTES": lambda c: c["inputs"].pop(),
        "not among the outputs": lambda c: c["outputs"].pop(),
        "needs task: judge": lambda c: c.update(
            task="classifier",
            classifier={"probabilities": "score_probabilities"},
            labels=list("abcde"),
        ),
    }
    for message, change in cases.items():
        config = yaml.safe_load((exported.model_root / "config.yaml").read_text())
        change(config)
        with pytest.raises(ValidationError, match=message):
            ModelConfig.model_validate(config)


def test_centred_weights_read_each_layers_logits_less_their_mean(exported):
    """center=True puts a centring of every layer's K logits before the head; setting weights
    again without it takes it out; the graph's own layer_logits and layer_scores never move."""
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(LAYERS + 1, 5)).astype(np.float32)
    batch = _encode(exported)
    before = _run(exported, batch)
    try:
        for _ in range(2):  # idempotent
            set_layer_weights(exported.model_path, weights, center=True)
        out = _run(exported, batch)
        z = out["layer_logits"].astype(np.float64)
        centred = z - z.mean(axis=2, keepdims=True)
        score, probabilities = expected_score(centred, weights, np.arange(1, 6))
        np.testing.assert_allclose(out["expected_score"], score, atol=1e-4)
        np.testing.assert_allclose(out["score_probabilities"], probabilities, atol=1e-5)
        np.testing.assert_array_equal(out["layer_logits"], before["layer_logits"])
        np.testing.assert_array_equal(out["layer_scores"], before["layer_scores"])
        set_layer_weights(exported.model_path, weights)
        plain = _run(exported, batch)
        score, _ = expected_score(z, weights, np.arange(1, 6))
        np.testing.assert_allclose(plain["expected_score"], score, atol=1e-4)
        assert not np.allclose(plain["expected_score"], out["expected_score"])
        names = {node.name for node in onnx.load(str(exported.model_path)).graph.node}
        assert not any(name.startswith("lager_input/") for name in names)
    finally:
        set_layer_weights(exported.model_path, np.full(LAYERS + 1, 1 / (LAYERS + 1)))


def test_a_constant_layer_makes_the_last_weight_row_a_bias(exported):
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(LAYERS + 2, 5)).astype(np.float32)
    batch = _encode(exported)
    try:
        with pytest.raises(ValueError, match=r"expected \[4, 5\]"):
            set_layer_weights(exported.model_path, weights[:-1], constant_layer=True)
        set_layer_weights(exported.model_path, weights, center=True, constant_layer=True)
        out = _run(exported, batch)
        z = out["layer_logits"].astype(np.float64)
        centred = z - z.mean(axis=2, keepdims=True)
        with_ones = np.concatenate([centred, np.ones((len(z), 1, 5))], axis=1)
        score, probabilities = expected_score(with_ones, weights, np.arange(1, 6))
        np.testing.assert_allclose(out["expected_score"], score, atol=1e-4)
        np.testing.assert_allclose(out["score_probabilities"], probabilities, atol=1e-5)
        assert out["layer_scores"].shape == (len(z), LAYERS + 1)
    finally:
        set_layer_weights(exported.model_path, np.full(LAYERS + 1, 1 / (LAYERS + 1)))
