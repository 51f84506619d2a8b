"""Classifier export on a small real subset of the fortunes corpus: one build per session, then
the repository entry, the ONNX graph, parity with a fresh torch model, and the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from surety_serving import kernels
from surety_serving.data.fortunes import Example, read_jsonl, write_jsonl
from surety_serving.export.classifier import (
    TOKEN_OUTPUT,
    ExportError,
    ExportResult,
    export_classifier,
    read_export_metadata,
    repository_config,
)
from surety_serving.export.common import ort_session
from surety_serving.export.encoder import (
    EncodedBatch,
    build_pooled_classifier,
    default_encoder_dir,
    load_encoder,
)
from surety_serving.runtime.config import ModelConfig, load_config
from surety_serving.tasks.classifier import ClassifierConfig
from tests.service import textmodel

pytestmark = pytest.mark.model

HIDDEN = 384
LAYERS = 6


@pytest.fixture(scope="session")
def built(text_export: ExportResult) -> ExportResult:
    """The tiny export shared with the text-serving tests (tests/service/textmodel.py)."""
    return text_export


@pytest.fixture(scope="session")
def session(built: ExportResult) -> ort.InferenceSession:
    return ort_session(built.model_path)


@pytest.fixture(scope="session")
def tokenizer(built: ExportResult) -> Tokenizer:
    return Tokenizer.from_file(str(built.tokenizer_path))


@pytest.fixture(scope="session")
def reference(built: ExportResult) -> torch.nn.Module:
    """A fresh torch instance of the exported model (the encoder reloaded with the exported
    weights, the head and the token Gaussian copied)."""
    encoder = load_encoder(default_encoder_dir())
    encoder.load_state_dict({k: torch.from_numpy(v) for k, v in built.encoder_state.items()})
    head = torch.nn.Linear(HIDDEN, len(built.labels))
    head.load_state_dict({k: torch.from_numpy(v) for k, v in built.head.items()})
    return build_pooled_classifier(encoder, head.eval(), token_gaussian=built.token_gaussian)


def test_repository_entry_is_complete(built: ExportResult) -> None:
    root = built.model_root
    assert root.name == "tiny-topics"
    assert built.version_dir == root / "3"
    assert sorted(p.name for p in built.version_dir.iterdir()) == ["model.onnx", "tokenizer.json"]
    assert sorted(p.name for p in root.iterdir()) == [
        "3",
        "config.yaml",
        "export.json",
        "labels.txt",
    ]
    assert built.labels_path == root / "labels.txt"
    assert built.labels_path.read_text().splitlines() == list(built.labels)
    assert len(built.labels) == 11
    assert built.taps == tuple(f"pooled_{i}" for i in range(LAYERS + 1))


def test_export_json_describes_the_model(built: ExportResult) -> None:
    metadata = read_export_metadata(built.model_root)
    assert metadata == json.loads(json.dumps(built.metadata))
    assert metadata["task"] == "classifier"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == [
        "logits",
        "probabilities",
        *built.taps,
        TOKEN_OUTPUT,
    ]
    assert [t["name"] for t in metadata["taps"]] == list(built.taps)
    assert all(t["dim"] == HIDDEN for t in metadata["taps"])
    assert metadata["labels"] == list(built.labels)
    assert metadata["tokenizer"]["max_length"] == 64 == built.max_length
    assert metadata["metrics"]["test_accuracy"] == built.test_accuracy
    assert metadata["parity"]["max_error"] <= 1e-4


def test_graph_has_the_custom_softmax_and_dynamic_axes(built: ExportResult) -> None:
    model = onnx.load(str(built.model_path), load_external_data=False)
    custom = [n for n in model.graph.node if n.domain == kernels.DOMAIN]
    assert [(n.op_type, list(n.output)) for n in custom] == [("TwoPassSoftmax", ["probabilities"])]
    assert not [
        n for n in model.graph.node if n.op_type == "Softmax" and "probabilities" in n.output
    ]
    assert list(custom[0].input) == [custom[0].input[0], "scale"]
    ids, mask, scale = model.graph.input
    for graph_input in (ids, mask):
        dims = graph_input.type.tensor_type.shape.dim
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param and not d.dim_value for d in dims), graph_input
    assert scale.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in scale.type.tensor_type.shape.dim][1:] == [1]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "scale"]


@pytest.mark.parametrize(
    "texts",
    [
        ["The computer is down."],
        [
            "Beam me up.",
            "Linux is only free if your time has no value, said someone on a mailing list once.",
            "Eat your vegetables",
        ],
    ],
    ids=["batch1", "batch3"],
)
def test_onnx_matches_a_fresh_torch_model(
    texts: list[str],
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    reference: torch.nn.Module,
    built: ExportResult,
) -> None:
    batch = EncodedBatch.encode(tokenizer, texts)
    mask = batch.attention_mask.numpy()
    if len(texts) > 1:
        assert len(set(mask.sum(axis=1))) == len(texts), "rows should differ in length"
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits", "probabilities", *built.taps, TOKEN_OUTPUT]
    outputs = dict(
        zip(
            names,
            session.run(
                names,
                {
                    "input_ids": batch.input_ids.numpy(),
                    "attention_mask": mask,
                    "scale": np.ones((len(texts), 1), dtype=np.float32),
                },
            ),
            strict=True,
        )
    )
    with torch.no_grad():
        expected = dict(zip(names, reference(batch.input_ids, batch.attention_mask), strict=True))
    n, c = len(texts), len(built.labels)
    shapes = {"logits": (n, c), "probabilities": (n, c), TOKEN_OUTPUT: (n,)}
    for name in names:
        want = expected[name].numpy()
        assert outputs[name].shape == shapes.get(name, (n, HIDDEN))
        assert outputs[name].dtype == np.float32
        # token_mahalanobis is in the hundreds: float32 agrees to a relative ~1e-6 there.
        np.testing.assert_allclose(outputs[name], want, atol=1e-4, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_row(session: ort.InferenceSession, tokenizer: Tokenizer) -> None:
    alone = EncodedBatch.encode(tokenizer, ["Short one."])
    padded = EncodedBatch.encode(tokenizer, ["Short one.", "A much longer text " * 5])

    def run(batch: EncodedBatch) -> list[np.ndarray]:
        feed = {
            "input_ids": batch.input_ids.numpy(),
            "attention_mask": batch.attention_mask.numpy(),
            "scale": np.ones((len(batch.input_ids), 1), dtype=np.float32),
        }
        return list(session.run(None, feed))

    for a, b in zip(run(alone), run(padded), strict=True):
        np.testing.assert_allclose(a[0], b[0], atol=1e-4)


def test_scale_divides_the_logits_inside_the_softmax_only(
    session: ort.InferenceSession, tokenizer: Tokenizer
) -> None:
    batch = EncodedBatch.encode(tokenizer, ["Beam me up.", "The court adjourned."])
    feed = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
    scale = np.array([[1.0], [0.25]], dtype=np.float32)
    logits, probabilities = session.run(["logits", "probabilities"], {**feed, "scale": scale})
    scaled = logits * scale
    expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_config_yaml_is_servable(built: ExportResult) -> None:
    config = load_config(built.model_root / "config.yaml", ClassifierConfig)
    assert config.model_dump(mode="json") == ModelConfig.model_validate(
        repository_config(built.metadata)
    ).model_dump(mode="json")
    (text,) = config.inputs
    assert (text.name, text.datatype, text.shape, text.decoder) == ("text", "BYTES", [-1], "text")
    assert text.text_spec.max_length == built.max_length == 64
    assert config.classifier is not None
    assert (config.classifier.probabilities, config.classifier.scale_input) == (
        "probabilities",
        "scale",
    )
    assert config.labels == list(built.labels)
    assert config.uncertainty.taps == list(built.taps)
    assert (config.uncertainty.logits, config.uncertainty.sdm_tap) == ("logits", "pooled_6")
    assert config.uncertainty.token_score == TOKEN_OUTPUT
    assert [o.name for o in config.outputs] == [
        "logits",
        "probabilities",
        *built.taps,
        TOKEN_OUTPUT,
    ]


def test_tokenizer_json_loads_and_truncates(built: ExportResult, tokenizer: Tokenizer) -> None:
    encodings = tokenizer.encode_batch(["hello world", "word " * 500])
    assert len(encodings[0].ids) == len(encodings[1].ids) == built.max_length
    assert encodings[0].ids[0] == tokenizer.token_to_id("[CLS]")
    assert sum(encodings[0].attention_mask) == 4
    single = tokenizer.encode("hello world")
    assert len(single.ids) == 4  # padding is to the batch's longest, never to a fixed length


def test_tiny_run_beats_chance(built: ExportResult) -> None:
    test = read_jsonl(Path(built.metadata["training"]["test_file"]))
    majority = max(sum(e.label == label for e in test) for label in built.labels) / len(test)
    assert built.num_test == len(test) == textmodel.TEST_PER_TOPIC * len(built.labels)
    assert built.test_accuracy > max(2 / len(built.labels), majority + 0.1)
    assert built.train_accuracy >= built.test_accuracy


def test_labels_outside_the_label_set_are_rejected_before_any_work(tmp_path: Path) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_jsonl(train, [Example("a", "x"), Example("b", "y")])
    write_jsonl(test, [Example("c", "z")])
    with pytest.raises(ExportError, match=r"\['z'\]"):
        export_classifier(None, train, test, tmp_path / "repo", "bad")
    with pytest.raises(ExportError, match="two distinct labels"):
        export_classifier(None, train, train, tmp_path / "repo", "bad", labels=["x"])
    assert not (tmp_path / "repo").exists()
