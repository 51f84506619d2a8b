"""Training a linear head with the SDM loss (Schmaltz 2025), over fixed exemplar features.

The head z′ = W f + b is trained with the negative log-likelihood in base (2+q),
−log_{2+q} sdm(z′)_y = −log softmax(ln(2+q)·d·z′)_y / ln(2+q), where q and d of every training
point are recomputed after each epoch from the head's current predictions (the first epoch uses
q = e−2, d = 1, i.e. plain cross-entropy). The exemplar space is the input features themselves,
so neighbour lists are computed once; only predictions, and therefore q and d, change.

J random even splits of the data into train / calibration are run with fresh initialisation;
the split whose head has the lowest class-balanced calibration loss is kept. Needs torch (the
`models` extra): import this module only where models are built, never from serving code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from surety_serving.uncertainty.sdm import ecdf_below, nearest_neighbours, similarity_q


@dataclass(frozen=True)
class SDMHead:
    """The selected head and the split it was trained on."""

    weight: NDArray[np.float32]  # [C, F]
    bias: NDArray[np.float32]  # [C]
    calibration_loss: float
    train_indices: NDArray[np.int64]
    calibration_indices: NDArray[np.int64]


@dataclass(frozen=True)
class _Neighbours:
    """Neighbour lists in the support (training) half, fixed because the features are."""

    indices: NDArray[np.int64]
    nearest: NDArray[np.float64]


def _q_and_d(
    neighbours: _Neighbours,
    predictions: NDArray[np.int64],
    labels: NDArray[np.int64],
    support_labels: NDArray[np.int64],
    support_predictions: NDArray[np.int64],
    num_classes: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """q and d of a set of points, with the distance eCDFs taken over that same set.

    A class with no q > 0 point yet (early in training) is left out of the min over classes,
    so the loss keeps a gradient; if no class has one, d = 1.
    """
    q = similarity_q(neighbours.indices, support_labels, support_predictions, predictions)
    tables = [neighbours.nearest[(labels == c) & (q > 0)] for c in range(num_classes)]
    quantiles = [1.0 - ecdf_below(np.sort(t), neighbours.nearest) for t in tables if len(t)]
    d = np.min(np.stack(quantiles), axis=0) if quantiles else np.ones(len(q))
    return q.astype(np.float64), d


def _sdm_nll(
    logits: torch.Tensor, labels: torch.Tensor, q: NDArray[np.float64], d: NDArray[np.float64]
) -> torch.Tensor:
    """Per-point −log_{2+q} softmax(ln(2+q)·d·z′)_y."""
    log_base = torch.from_numpy(np.log(2.0 + q)).float()
    scale = log_base * torch.from_numpy(d).float()
    return (
        torch.nn.functional.cross_entropy(logits * scale[:, None], labels, reduction="none")
        / log_base
    )


def train_sdm_head(
    features: NDArray[np.floating],
    labels: NDArray[np.integer],
    num_classes: int,
    *,
    shuffles: int = 5,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    k: int = 100,
    seed: int = 0,
) -> SDMHead:
    """Train J heads on J random even splits; return the one with the lowest calibration loss."""
    x_all = np.asarray(features, dtype=np.float32)
    y_all = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    best: SDMHead | None = None
    for split in range(shuffles):
        order = rng.permutation(len(y_all))
        train_idx = np.sort(order[: len(order) // 2])
        cal_idx = np.sort(order[len(order) // 2 :])
        x_tr, y_tr = torch.from_numpy(x_all[train_idx]), y_all[train_idx]
        x_ca, y_ca = torch.from_numpy(x_all[cal_idx]), y_all[cal_idx]
        # Training points skip their self-match; calibration points are not in the support.
        ix, dist = nearest_neighbours(
            x_all[train_idx], x_all[train_idx], k, exclude=np.arange(len(train_idx))
        )
        train_nb = _Neighbours(ix, dist[:, 0])
        ix, dist = nearest_neighbours(x_all[train_idx], x_all[cal_idx], k)
        cal_nb = _Neighbours(ix, dist[:, 0])

        torch.manual_seed(seed * 1000 + split)
        head = torch.nn.Linear(x_all.shape[1], num_classes)
        optimiser = torch.optim.Adam(head.parameters(), lr=learning_rate)
        targets = torch.from_numpy(y_tr)
        q = np.full(len(y_tr), math.e - 2.0)  # first epoch: plain cross-entropy
        d = np.ones(len(y_tr))
        for _ in range(epochs):
            for batch in torch.randperm(len(y_tr)).split(batch_size):  # type: ignore[no-untyped-call]
                optimiser.zero_grad()
                rows = batch.numpy()
                _sdm_nll(head(x_tr[batch]), targets[batch], q[rows], d[rows]).mean().backward()  # type: ignore[no-untyped-call]
                optimiser.step()
            with torch.no_grad():
                tr_pred = head(x_tr).argmax(dim=1).numpy()
            q, d = _q_and_d(train_nb, tr_pred, y_tr, y_tr, tr_pred, num_classes)

        with torch.no_grad():
            z_ca = head(x_ca)
            q_ca, d_ca = _q_and_d(
                cal_nb, z_ca.argmax(dim=1).numpy(), y_ca, y_tr, tr_pred, num_classes
            )
            losses = _sdm_nll(z_ca, torch.from_numpy(y_ca), q_ca, d_ca).numpy()
        balanced = float(np.mean([losses[y_ca == c].mean() for c in np.unique(y_ca)]))
        if best is None or balanced < best.calibration_loss:
            best = SDMHead(
                weight=head.weight.detach().numpy().copy(),
                bias=head.bias.detach().numpy().copy(),
                calibration_loss=balanced,
                train_indices=train_idx,
                calibration_indices=cal_idx,
            )
    if best is None:
        raise ValueError("shuffles must be at least 1")
    return best
