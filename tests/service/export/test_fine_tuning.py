"""Encoder fine-tuning and the token_mahalanobis output, on a tiny random BERT (3 layers, H = 32,
all-MiniLM-L6-v2's tokenizer) and three synthetic topics: each export takes seconds."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from surety_serving.cli import parser
from surety_serving.data.fortunes import Example, read_jsonl, write_jsonl
from surety_serving.export import commands, fine_tuning
from surety_serving.export.classifier import (
    TOKEN_OUTPUT,
    ExportError,
    ExportResult,
    FineTuning,
    TrainingConfig,
    export_classifier,
    read_export_metadata,
)
from surety_serving.export.common import ort_session
from surety_serving.export.encoder import (
    EncodedBatch,
    build_pooled_classifier,
    default_encoder_dir,
    load_encoder,
    load_tokenizer,
    mean_pool,
)
from surety_serving.models.torch_threads import one_torch_thread
from surety_serving.runtime.config import load_config
from surety_serving.tasks.classifier import ClassifierConfig
from tests.tiers import model_fixture

# Fine-tuning and exporting an encoder, three times over: slow, so `make test` runs it and
# `make check` does not (the frozen-encoder export of tests/service/textmodel.py stays in both).
pytestmark = [pytest.mark.model, pytest.mark.slow]

LAYERS = 3
HIDDEN = 32
MAX_LENGTH = 32
TOPICS = {
    "pets": "cat dog puppy kitten leash bark purr fur vet collar",
    "money": "stock bond market price dividend bank loan interest fund share",
    "space": "star planet orbit rocket moon comet galaxy telescope launch astronaut",
}
FILLER = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "on"]
# Larger steps than the real model's defaults: the random encoder has everything to learn.
TINY = FineTuning(encoder_learning_rate=1e-3, head_learning_rate=1e-2, batch_size=8)


def topic_text(rng: np.random.Generator, topic: str) -> str:
    words = [
        *rng.choice(TOPICS[topic].split(), rng.integers(3, 7)),
        *rng.choice(FILLER, rng.integers(2, 5)),
    ]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # This encoder's matrices are tiny: a second torch thread only adds synchronisation, and
    # much of it when the cores are busy with other work.
    with one_torch_thread():
        yield


@model_fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-layer BERT folder (with MiniLM's tokenizer) and train / test JSONL files."""
    root = tmp_path_factory.mktemp("fine_tuning")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=30522,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        BertModel(config).save_pretrained(root / "encoder")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(default_encoder_dir() / name, root / "encoder" / name)
    rng = np.random.default_rng(0)
    for split, per_topic in (("train", 20), ("test", 6)):
        examples = [Example(topic_text(rng, t), t) for t in TOPICS for _ in range(per_topic)]
        write_jsonl(root / f"{split}.jsonl", examples)
    return root


def export(work: Path, name: str, tuning: FineTuning, **options: Any) -> ExportResult:
    return export_classifier(
        work / "encoder",
        work / "train.jsonl",
        work / "test.jsonl",
        work / "repo",
        name,
        max_length=MAX_LENGTH,
        fine_tuning=tuning,
        show_progress=False,
        **options,
    )


@pytest.fixture(scope="module")
def tuned(work: Path) -> ExportResult:
    return export(work, "tuned", TINY)


@pytest.fixture(scope="module")
def tuned_again(work: Path) -> ExportResult:
    return export(work, "tuned-again", TINY, check_parity=False)


@pytest.fixture(scope="module")
def frozen(work: Path) -> ExportResult:
    return export(work, "frozen", FineTuning(layers=0), training=TrainingConfig(epochs=100))


@pytest.fixture(scope="module")
def texts(work: Path) -> list[str]:
    return [e.text for e in read_jsonl(work / "train.jsonl")]


def session(result: ExportResult) -> ort.InferenceSession:
    return ort_session(result.model_path)


def run_onnx(result: ExportResult, texts: list[str]) -> dict[str, np.ndarray]:
    batch = EncodedBatch.encode(Tokenizer.from_file(str(result.tokenizer_path)), texts)
    model = session(result)
    names = [o.name for o in model.get_outputs()]
    feed = {
        "input_ids": batch.input_ids.numpy(),
        "attention_mask": batch.attention_mask.numpy(),
        "scale": np.ones((len(texts), 1), dtype=np.float32),
    }
    return dict(zip(names, model.run(names, feed), strict=True))


def trained_encoder(work: Path, result: ExportResult) -> Any:
    encoder = load_encoder(work / "encoder")
    encoder.load_state_dict({k: torch.from_numpy(v) for k, v in result.encoder_state.items()})
    return encoder


def fine_tune(work: Path, tuning: FineTuning) -> tuple[Any, fine_tuning.FineTuned]:
    """``fine_tuning.fine_tune`` alone (no export) on the tiny encoder: (encoder, result)."""
    encoder = load_encoder(work / "encoder")
    examples = read_jsonl(work / "train.jsonl")
    labels = sorted(TOPICS)
    result = fine_tuning.fine_tune(
        encoder,
        load_tokenizer(work / "encoder", MAX_LENGTH),
        [e.text for e in examples],
        np.array([labels.index(e.label) for e in examples]),
        len(labels),
        tuning,
        show_progress=False,
    )
    return encoder, result


# --------------------------------------------------------------------------------------------
# Determinism


def test_the_same_seed_gives_the_same_export(
    tuned: ExportResult, tuned_again: ExportResult, texts: list[str]
) -> None:
    for key, value in tuned.head.items():
        np.testing.assert_array_equal(value, tuned_again.head[key], err_msg=key)
    for key, value in tuned.encoder_state.items():
        np.testing.assert_array_equal(value, tuned_again.encoder_state[key], err_msg=key)
    first, second = run_onnx(tuned, texts[:7]), run_onnx(tuned_again, texts[:7])
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name], err_msg=name)
    losses = [
        [(e["train_loss"], e["validation_loss"]) for e in r.metadata["training"]["epochs"]]
        for r in (tuned, tuned_again)
    ]
    assert losses[0] == losses[1]


def test_the_seed_decides_the_weights(tuned: ExportResult, work: Path) -> None:
    (_, same), (_, other) = fine_tune(work, TINY), fine_tune(work, replace(TINY, seed=1))
    np.testing.assert_array_equal(same.head.weight.detach().numpy(), tuned.head["weight"])
    assert not np.allclose(other.head.weight.detach().numpy(), tuned.head["weight"])


def test_fine_tuning_leaves_the_callers_random_state_alone(work: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fine_tune(work, replace(TINY, max_epochs=1))
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------------------------
# Which layers train


def test_top_layers_train_and_the_rest_stay_as_loaded(work: Path) -> None:
    original = load_encoder(work / "encoder").state_dict()
    encoder, result = fine_tune(work, replace(TINY, layers=1))
    changed = {
        name
        for name, value in encoder.state_dict().items()
        if not torch.equal(value, original[name])
    }
    top = f"encoder.layer.{LAYERS - 1}."
    assert changed and all(name.startswith(top) for name in changed), changed
    assert {n for n in original if n.startswith(top) and "weight" in n} <= changed
    assert result.best_epoch >= 1


def test_all_layers_train(tuned: ExportResult, work: Path) -> None:
    original = load_encoder(work / "encoder").state_dict()
    for prefix in ("embeddings.word_embeddings", "encoder.layer.0.", f"encoder.layer.{LAYERS - 1}"):
        names = [n for n in original if n.startswith(prefix)]
        assert any(
            not np.array_equal(tuned.encoder_state[n], original[n].numpy()) for n in names
        ), prefix


def test_zero_layers_is_the_frozen_encoder_with_a_head_fitted_on_its_embeddings(
    frozen: ExportResult, work: Path, texts: list[str]
) -> None:
    original = load_encoder(work / "encoder")
    for name, value in original.state_dict().items():
        np.testing.assert_array_equal(frozen.encoder_state[name], value.numpy(), err_msg=name)
    training = frozen.metadata["training"]
    assert (training["layers"], training["encoder"], training["epochs"]) == (0, "frozen", 100)
    assert frozen.validation_accuracy is None
    tokenizer = load_tokenizer(work / "encoder", MAX_LENGTH)
    features = fine_tuning.embed(
        original, tokenizer, texts, batch_size=8, desc="", show_progress=False
    )
    labels = sorted(TOPICS)
    targets = torch.tensor([labels.index(e.label) for e in read_jsonl(work / "train.jsonl")])
    head = fine_tuning.train_head(
        features, targets, len(labels), TrainingConfig(epochs=100), seed=0, show_progress=False
    )
    np.testing.assert_allclose(head.weight.detach().numpy(), frozen.head["weight"], atol=1e-5)


def test_more_layers_than_the_encoder_has_is_refused(work: Path) -> None:
    with pytest.raises(ExportError, match=f"4 of {LAYERS} layers"):
        export(work, "bad", FineTuning(layers=4))


@pytest.mark.parametrize(
    "field",
    [
        {"layers": -1},
        {"max_epochs": 0},
        {"patience": 0},
        {"batch_size": 0},
        {"validation_fraction": 1.0},
        {"warmup_fraction": -0.1},
    ],
)
def test_fine_tuning_rejects_nonsense(field: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(field))):
        FineTuning(**field)


# --------------------------------------------------------------------------------------------
# Early stopping, batches, schedule


def test_early_stopping_keeps_the_best_epoch(tuned: ExportResult) -> None:
    training = tuned.metadata["training"]
    epochs = training["epochs"]
    assert 1 <= training["best_epoch"] <= training["epochs_run"] == len(epochs)
    assert training["epochs_run"] <= training["max_epochs"] == TINY.max_epochs
    best = epochs[training["best_epoch"] - 1]
    assert best["validation_accuracy"] == max(e["validation_accuracy"] for e in epochs)
    assert tuned.validation_accuracy == best["validation_accuracy"]
    assert training["validation"] == {"fraction": 0.1, "size": 6}  # 2 of each topic's 20


@pytest.mark.parametrize("patience", [1, 2])
def test_training_stops_after_patience_epochs_without_improvement(
    work: Path, patience: int
) -> None:
    # Learning rates of zero change nothing: epoch 1 stays the best and every later epoch ties.
    still = FineTuning(
        encoder_learning_rate=0.0,
        head_learning_rate=0.0,
        max_epochs=5,
        patience=patience,
        batch_size=8,
    )
    _, result = fine_tune(work, still)
    assert (len(result.epochs), result.best_epoch) == (1 + patience, 1)


def test_without_validation_every_epoch_runs_and_the_last_is_kept(work: Path) -> None:
    _, result = fine_tune(work, replace(TINY, validation_fraction=0.0))
    assert (len(result.epochs), result.best_epoch, result.validation_size) == (3, 3, 0)
    assert result.validation_accuracy is None


def test_batches_cover_the_epoch_once_and_pad_little() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=1000)
    batches = fine_tuning.length_batches(lengths, 8, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in batches)  # sorted within a batch
    waste = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)
    assert waste < 0.15 * lengths.sum()
    again = fine_tuning.length_batches(lengths, 8, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    factor = fine_tuning.warmup_then_decay(100, 0.1)
    values = [factor(step) for step in range(101)]
    assert values[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert values[10] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[100] == 0.0 < values[99]


# --------------------------------------------------------------------------------------------
# token_mahalanobis


def token_scores(work: Path, result: ExportResult, texts: list[str]) -> np.ndarray:
    """The float64 reference: torch hidden states, numpy distances, masked mean per row."""
    encoder = trained_encoder(work, result)
    batch = EncodedBatch.encode(Tokenizer.from_file(str(result.tokenizer_path)), texts)
    with torch.no_grad():
        hidden = encoder(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        ).hidden_states[result.token_gaussian.layer]
    centred = hidden.double().numpy() - result.token_gaussian.mean
    distances = ((centred @ result.token_gaussian.whitening) ** 2).sum(axis=-1)
    mask = batch.attention_mask.numpy()
    return (distances * mask).sum(axis=1) / mask.sum(axis=1)


def random_token_texts(count: int, seed: int) -> list[str]:
    vocab = Tokenizer.from_file(str(default_encoder_dir() / "tokenizer.json")).get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii())
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, 8)) for _ in range(count)]


def test_token_mahalanobis_matches_a_float64_recomputation(
    tuned: ExportResult, work: Path, texts: list[str]
) -> None:
    sample = [*texts[:5], *random_token_texts(3, seed=0)]
    actual = run_onnx(tuned, sample)[TOKEN_OUTPUT]
    assert actual.shape == (len(sample),) and actual.dtype == np.float32
    np.testing.assert_allclose(actual, token_scores(work, tuned, sample), rtol=1e-3)


def test_token_gaussian_whitens_the_training_tokens(tuned: ExportResult, work: Path) -> None:
    # Over the tokens it was fitted on, the mean squared whitened distance is exactly the rank.
    texts = [e.text for e in read_jsonl(work / "train.jsonl")]
    scores = token_scores(work, tuned, texts)
    tokenizer = Tokenizer.from_file(str(tuned.tokenizer_path))
    counts = np.array([len(tokenizer.encode(t).ids) for t in texts])
    gaussian = tuned.token_gaussian
    assert gaussian.tokens == counts.sum()
    assert (scores * counts).sum() / counts.sum() == pytest.approx(gaussian.rank, rel=1e-6)
    assert 0 < gaussian.rank <= HIDDEN


def test_random_tokens_score_higher_than_training_texts(
    tuned: ExportResult, frozen: ExportResult, texts: list[str]
) -> None:
    for result in (tuned, frozen):
        familiar = run_onnx(result, texts)[TOKEN_OUTPUT]
        strange = run_onnx(result, random_token_texts(20, seed=1))[TOKEN_OUTPUT]
        # Nearly every random text scores above nearly every training text.
        assert np.mean(strange[:, None] > familiar[None, :]) > 0.95, result.name
        assert strange.mean() > 1.5 * familiar.mean(), result.name


def test_the_reference_module_computes_the_same_score(tuned: ExportResult, work: Path) -> None:
    sample = ["cat bank orbit", "the moon is a comet of the galaxy"]
    head = torch.nn.Linear(HIDDEN, len(TOPICS))
    head.load_state_dict({k: torch.from_numpy(v) for k, v in tuned.head.items()})
    module = build_pooled_classifier(
        trained_encoder(work, tuned), head, token_gaussian=tuned.token_gaussian
    )
    batch = EncodedBatch.encode(Tokenizer.from_file(str(tuned.tokenizer_path)), sample)
    with torch.no_grad():
        outputs = module(batch.input_ids, batch.attention_mask)
    assert len(outputs) == 2 + (LAYERS + 1) + 1
    np.testing.assert_allclose(outputs[-1].numpy(), token_scores(work, tuned, sample), rtol=1e-4)
    np.testing.assert_allclose(
        outputs[1 + LAYERS + 1].numpy(),
        mean_pool(
            trained_encoder(work, tuned)(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).last_hidden_state,
            batch.attention_mask,
        )
        .detach()
        .numpy(),
        atol=1e-5,
    )


# --------------------------------------------------------------------------------------------
# The record and the servable config


def test_export_json_records_the_fine_tuning(tuned: ExportResult, frozen: ExportResult) -> None:
    metadata = read_export_metadata(tuned.model_root)
    training = metadata["training"]
    assert training["layers"] == "all"
    expected = {
        "max_epochs": TINY.max_epochs,
        "encoder_learning_rate": TINY.encoder_learning_rate,
        "head_learning_rate": TINY.head_learning_rate,
        "weight_decay": TINY.weight_decay,
        "warmup_fraction": TINY.warmup_fraction,
        "batch_size": TINY.batch_size,
        "patience": TINY.patience,
        "seed": TINY.seed,
        "max_length": MAX_LENGTH,
    }
    assert {key: training[key] for key in expected} == expected
    assert [set(e) for e in training["epochs"]] == [
        {"epoch", "train_loss", "validation_accuracy", "validation_loss", "seconds"}
    ] * training["epochs_run"]
    assert metadata["metrics"]["validation_accuracy"] == tuned.validation_accuracy
    assert metadata["token_density"] == {
        "output": TOKEN_OUTPUT,
        "layer": 1,
        "rank": tuned.token_gaussian.rank,
        "tokens": tuned.token_gaussian.tokens,
        "eigenvalue_cutoff": 1e-6,
    }
    assert [o["name"] for o in metadata["outputs"]][-1] == TOKEN_OUTPUT
    assert metadata["outputs"][-1] == {"name": TOKEN_OUTPUT, "datatype": "FP32", "shape": [-1]}
    assert metadata["parity"]["max_error"] <= 1e-4
    assert frozen.metadata["training"]["layers"] == 0
    assert training_record(FineTuning(layers=2))["layers"] == 2


def training_record(tuning: FineTuning) -> dict[str, Any]:
    done = fine_tuning.FineTuned(torch.nn.Linear(2, 2), [], 1, 0)
    return fine_tuning.training_record(tuning, TrainingConfig(), done)


def test_graph_carries_the_token_output_and_its_record(tuned: ExportResult) -> None:
    model = onnx.load(str(tuned.model_path))
    (output,) = [o for o in model.graph.output if o.name == TOKEN_OUTPUT]
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(output.type.tensor_type.shape.dim) == 1
    props = {p.key: p.value for p in model.metadata_props}
    assert '"output": "token_mahalanobis"' in props["surety.token_density"]


def test_config_yaml_names_the_token_score(tuned: ExportResult) -> None:
    config = load_config(tuned.model_root / "config.yaml", ClassifierConfig)
    assert config.uncertainty.token_score == TOKEN_OUTPUT
    assert config.uncertainty.taps == list(tuned.taps)
    (token,) = [o for o in config.outputs if o.name == TOKEN_OUTPUT]
    assert (token.datatype, token.shape) == ("FP32", [-1])
    assert "fine-tuned" in config.description


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_fine_tuning_options() -> None:
    base = ["export", "classifier", "--train", "a", "--test", "b", "--name", "m"]
    defaults = commands.fine_tuning_from_arguments(parser().parse_args(base))
    assert defaults == FineTuning()
    args = parser().parse_args(
        [
            *base,
            "--fine-tune-layers",
            "2",
            "--epochs",
            "5",
            "--encoder-lr",
            "3e-5",
            "--patience",
            "2",
            "--validation-fraction",
            "0.2",
            "--seed",
            "7",
        ]
    )
    assert commands.fine_tuning_from_arguments(args) == FineTuning(
        layers=2,
        max_epochs=5,
        encoder_learning_rate=3e-5,
        patience=2,
        validation_fraction=0.2,
        seed=7,
    )
    assert parser().parse_args([*base, "--fine-tune-layers", "0"]).fine_tune_layers == 0
    for bad in (["--fine-tune-layers", "some"], ["--epochs", "0"], ["--validation-fraction", "1"]):
        with pytest.raises(SystemExit):
            parser().parse_args([*base, *bad])
