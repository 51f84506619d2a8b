"""Training a text classifier's weights: the encoder fine-tuned with a linear head
(:class:`FineTuning`), or the head alone on a frozen encoder (:class:`TrainingConfig`).
docs/models.md describes the recipe and its measured defaults."""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from surety_serving.export.encoder import EncodedBatch, TokenMoments, build_pooled_classifier
from surety_serving.models.torch_threads import one_torch_thread

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "BUCKET_BATCHES",
    "Epoch",
    "FineTuned",
    "FineTuning",
    "TrainingConfig",
    "embed",
    "fine_tune",
    "head_accuracy",
    "length_batches",
    "token_lengths",
    "train_head",
    "training_record",
    "warmup_then_decay",
]

log = logging.getLogger(__name__)

#: Fine-tuning batches are sorted by length within chunks of this many batches: little padding,
#: yet the batches differ from epoch to epoch.
BUCKET_BATCHES = 16


@dataclass(frozen=True)
class FineTuning:
    """How the encoder is trained with the head: AdamW on the cross-entropy of the linear head
    over the mean-pooled last layer (the exported graph's architecture), dropout on.

    ``layers``: None trains the embeddings and every transformer layer, N only the top N layers,
    0 none — the encoder stays frozen and the head is fitted on embeddings computed once
    (:class:`TrainingConfig`; of the fields below only ``seed`` and ``batch_size`` apply).
    The learning rates warm up linearly over the first ``warmup_fraction`` of the steps of
    ``max_epochs`` epochs, then decay linearly to 0 at their end. A stratified, seeded
    ``validation_fraction`` of the training texts is held out of the fit; after each epoch its
    accuracy (ties: lower loss) picks the best epoch, whose weights are kept, and training stops
    after ``patience`` epochs without improvement; with ``validation_fraction`` 0 every epoch
    runs and the last is kept. The defaults are those docs/models.md measured on fortune-topics.
    """

    layers: int | None = None
    max_epochs: int = 3
    encoder_learning_rate: float = 8e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    batch_size: int = 32
    validation_fraction: float = 0.1
    patience: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "layers must be None or >= 0": self.layers is None or self.layers >= 0,
            "max_epochs must be >= 1": self.max_epochs >= 1,
            "batch_size must be >= 1": self.batch_size >= 1,
            "patience must be >= 1": self.patience >= 1,
            "warmup_fraction must be in [0, 1)": 0 <= self.warmup_fraction < 1,
            "validation_fraction must be in [0, 1)": 0 <= self.validation_fraction < 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

    @property
    def frozen(self) -> bool:
        """No encoder layer trains: the head alone is fitted, on cached embeddings."""
        return self.layers == 0


@dataclass(frozen=True)
class TrainingConfig:
    """The head's fit on a frozen encoder (``FineTuning(layers=0)``): L2-penalised multinomial
    logistic regression, fitted full-batch with Adam on the cached embeddings (300 epochs
    converge on ~3k texts).

    ``l2`` multiplies the squared Frobenius norm of the weights, added to the mean cross-entropy:
    fortune topics are noisy and an unpenalised head overfits them (docs/models.md: how ``l2``
    was chosen).
    """

    epochs: int = 300
    learning_rate: float = 0.02
    l2: float = 1e-3


def token_lengths(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    # encode_batch pads to the longest text, so the real lengths are the attention masks' sums.
    return np.array([sum(e.attention_mask) for e in tokenizer.encode_batch(list(texts))])


def embed(
    encoder: Any,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    desc: str,
    show_progress: bool,
    moments: TokenMoments | None = None,
) -> torch.Tensor:
    """Mean-pooled last-layer embeddings [N, H], computed in length-sorted batches (the encoder
    in eval mode); ``moments`` also accumulates its layer's token states."""
    import torch
    from tqdm import tqdm

    from surety_serving.export.encoder import mean_pool

    # Batching texts of similar length wastes little compute on padding.
    order = np.argsort(token_lengths(tokenizer, texts), kind="stable")
    chunks: list[torch.Tensor] = []
    encoder.eval()
    with torch.no_grad():
        for start in tqdm(
            range(0, len(order), batch_size),
            desc=desc,
            unit="batch",
            disable=not show_progress,
            file=sys.stderr,
        ):
            batch = EncodedBatch.encode(
                tokenizer, [texts[i] for i in order[start : start + batch_size]]
            )
            output = encoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                output_hidden_states=moments is not None,
            )
            if moments is not None:
                moments.add(output.hidden_states[moments.layer], batch.attention_mask)
            chunks.append(mean_pool(output.last_hidden_state, batch.attention_mask))
    embeddings = torch.cat(chunks)
    result = torch.empty_like(embeddings)
    result[torch.as_tensor(order)] = embeddings
    return result


def train_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    config: TrainingConfig,
    *,
    seed: int,
    show_progress: bool,
) -> torch.nn.Linear:
    with one_torch_thread():
        return _fit_head(
            features, targets, num_classes, config, seed=seed, show_progress=show_progress
        )


def _fit_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    config: TrainingConfig,
    *,
    seed: int,
    show_progress: bool,
) -> torch.nn.Linear:
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    head = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
    progress = tqdm(
        range(config.epochs),
        desc="training head",
        unit="epoch",
        disable=not show_progress,
        file=sys.stderr,
    )
    for _ in progress:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), targets)
        loss = loss + config.l2 * head.weight.pow(2).sum()
        torch.autograd.backward(loss)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return head.eval()


def head_accuracy(head: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor) -> float:
    import torch

    if len(targets) == 0:
        return float("nan")
    with torch.no_grad():
        # A count over a count: exactly the fraction a server's answers give (no float32 mean).
        return int((head(features).argmax(dim=1) == targets).sum()) / len(targets)


@dataclass(frozen=True)
class Epoch:
    """One fine-tuning epoch, as logged and recorded in export.json."""

    epoch: int
    train_loss: float
    validation_accuracy: float | None
    validation_loss: float | None
    seconds: float


@dataclass(frozen=True)
class FineTuned:
    """What fine-tuning leaves besides the encoder's weights: the head and the epochs' record."""

    head: torch.nn.Linear
    epochs: list[Epoch]
    best_epoch: int
    validation_size: int

    @property
    def validation_accuracy(self) -> float | None:
        return self.epochs[self.best_epoch - 1].validation_accuracy


def validation_split(targets: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask holding out ``fraction`` of each class (rounded), chosen at random."""
    held = np.zeros(len(targets), dtype=bool)
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        held[members[: round(fraction * len(members))]] = True
    return held


def length_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's batches of indices: a random permutation cut into chunks of BUCKET_BATCHES
    batches, each chunk sorted by token length and cut into batches, the batches shuffled (so
    lengths do not trend through the epoch)."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), BUCKET_BATCHES * batch_size):
        chunk = order[start : start + BUCKET_BATCHES * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def warmup_then_decay(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """The learning-rate factor at each optimizer step: linear from 1/(w+1) up to 1 over the
    first w steps, then linear down to 0 at ``total_steps`` (reached after the last step)."""
    warmup = round(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / (total_steps - warmup))

    return factor


def _trainable(encoder: Any, layers: int | None) -> list[torch.nn.Parameter]:
    """The encoder parameters fine-tuning updates; with ``layers`` N, all but the top N
    transformer layers (and the embeddings) are frozen."""
    if layers is None:
        return list(encoder.parameters())
    stack = encoder.encoder.layer
    encoder.requires_grad_(False)
    top = stack[len(stack) - layers :]
    top.requires_grad_(True)
    return list(top.parameters())


def fine_tune(
    encoder: Any,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    targets: np.ndarray,
    num_classes: int,
    tuning: FineTuning,
    *,
    show_progress: bool,
) -> FineTuned:
    """Train (the top layers of) ``encoder`` and a new linear head; return the best epoch's.

    The caller's torch random state is left as it was: the seed drives only this run (head
    initialisation, dropout), the numpy generator the validation split and the batches.
    """
    import torch
    from tqdm import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tuning.seed)
        rng = np.random.default_rng(tuning.seed)
        held = validation_split(targets, tuning.validation_fraction, rng)
        fit = np.flatnonzero(~held)
        fit_texts = [texts[i] for i in fit.tolist()]
        fit_targets = torch.as_tensor(targets[fit])
        val_texts = [texts[i] for i in np.flatnonzero(held).tolist()]
        val_targets = torch.as_tensor(targets[held])
        lengths = token_lengths(tokenizer, fit_texts)

        head = torch.nn.Linear(int(encoder.config.hidden_size), num_classes)
        model = build_pooled_classifier(encoder, head)
        optimizer = torch.optim.AdamW(
            [
                {"params": _trainable(encoder, tuning.layers), "lr": tuning.encoder_learning_rate},
                {"params": head.parameters(), "lr": tuning.head_learning_rate},
            ],
            weight_decay=tuning.weight_decay,
        )
        steps = tuning.max_epochs * math.ceil(len(fit) / tuning.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_then_decay(steps, tuning.warmup_fraction)
        )
        epochs: list[Epoch] = []
        best: tuple[tuple[float, float], int, dict[str, torch.Tensor]] | None = None
        for epoch in range(1, tuning.max_epochs + 1):
            started = time.perf_counter()
            model.train()
            total_loss = 0.0
            progress = tqdm(
                length_batches(lengths, tuning.batch_size, rng),
                desc=f"fine-tuning {epoch}/{tuning.max_epochs}",
                unit="batch",
                disable=not show_progress,
                file=sys.stderr,
            )
            for indices in progress:
                batch = EncodedBatch.encode(tokenizer, [fit_texts[i] for i in indices])
                logits = model(batch.input_ids, batch.attention_mask)[0]
                loss = torch.nn.functional.cross_entropy(logits, fit_targets[indices])
                optimizer.zero_grad()
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(indices)
                progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            accuracy: float | None = None
            validation_loss: float | None = None
            if val_texts:
                features = embed(
                    encoder,
                    tokenizer,
                    val_texts,
                    batch_size=tuning.batch_size,
                    desc="validation",
                    show_progress=show_progress,
                )
                accuracy = head_accuracy(head, features, val_targets)
                with torch.no_grad():
                    logits = head(features)
                validation_loss = float(torch.nn.functional.cross_entropy(logits, val_targets))
            epochs.append(
                Epoch(
                    epoch,
                    total_loss / len(fit),
                    accuracy,
                    validation_loss,
                    round(time.perf_counter() - started, 3),
                )
            )
            log.info(
                f"epoch {epoch}/{tuning.max_epochs}: train loss {epochs[-1].train_loss:.4f}, "
                + (
                    f"validation accuracy {accuracy:.4f} (loss {validation_loss:.4f}), "
                    if accuracy is not None and validation_loss is not None
                    else ""
                )
                + f"{epochs[-1].seconds:.0f} s"
            )
            if accuracy is None or validation_loss is None:
                continue
            # Accuracy is what the model is for; the loss only breaks ties (small splits tie often).
            key = (accuracy, -validation_loss)
            if best is None or key > best[0]:
                best = (key, epoch, copy.deepcopy(model.state_dict()))
            elif epoch - best[1] >= tuning.patience:
                log.info(f"stopping: no improvement for {tuning.patience} epoch(s)")
                break
        best_epoch = len(epochs)
        if best is not None:
            _, best_epoch, state = best
            model.load_state_dict(state)
        model.eval()
        return FineTuned(head, epochs, best_epoch, len(val_texts))


def training_record(
    tuning: FineTuning, head_fit: TrainingConfig, tuned: FineTuned | None
) -> dict[str, Any]:
    """export.json's account of how the weights were trained (``layers``: "all", N or 0)."""
    if tuned is None:
        return {
            "layers": 0,
            "encoder": "frozen",
            "head": "linear: L2-penalised logistic regression on the mean-pooled last layer, "
            "fitted full-batch with Adam on embeddings computed once",
            **asdict(head_fit),
            "seed": tuning.seed,
        }
    return {
        "layers": "all" if tuning.layers is None else tuning.layers,
        "encoder": "fine-tuned" if tuning.layers is None else f"top {tuning.layers} layers tuned",
        "head": "linear on the mean-pooled last layer; cross-entropy, AdamW, dropout on",
        "max_epochs": tuning.max_epochs,
        "epochs_run": len(tuned.epochs),
        "best_epoch": tuned.best_epoch,
        "encoder_learning_rate": tuning.encoder_learning_rate,
        "head_learning_rate": tuning.head_learning_rate,
        "weight_decay": tuning.weight_decay,
        "warmup_fraction": tuning.warmup_fraction,
        "schedule": "linear warm-up over warmup_fraction of max_epochs' steps, linear decay to 0",
        "batch_size": tuning.batch_size,
        "batching": f"length-bucketed: sorted within chunks of {BUCKET_BATCHES} batches",
        "validation": {"fraction": tuning.validation_fraction, "size": tuned.validation_size},
        "patience": tuning.patience,
        "seed": tuning.seed,
        # Per epoch: train loss, validation accuracy and loss, seconds.
        "epochs": [asdict(epoch) for epoch in tuned.epochs],
    }
