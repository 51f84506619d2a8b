"""Fitting LAGER's aggregation weights on labelled items, and our signed extensions.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from surety_serving.judge.lager import (
    DEFAULT_SCORE_VALUES,
    append_constant_layer,
    center_logits,
    nearest_score_index,
)

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_L2_GRID", "FitResult", "fit_lager", "fit_signed"]

F64 = npt.NDArray[np.float64]

DEFAULT_L2_GRID: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)
"""L2 strengths :func:`fit_signed` tries (per-batch penalty on ‖W − 1/L‖²)."""


@dataclass(frozen=True)
class FitResult:
    """Fitted weights and how the fit went.

    ``weights`` is [L] or [L, K]. They apply to the logits centred over the K scores when
    ``centered`` (:func:`~surety_serving.judge.lager.center_logits`), and with ``constant_layer``
    they
    have one more row, which applies to a constant layer of ones appended (after centring) to
    the logits (:func:`~surety_serving.judge.lager.append_constant_layer`).
    Per-epoch histories are means over the split; ``best_epoch`` (0-based) is the epoch whose
    weights were kept. ``l2_sweep`` holds (λ, its validation figure) for every λ tried: the best
    validation MSE for the LAGER-loss fitters, the validation Spearman for :func:`fit_probe`.
    """

    weights: F64
    mixing: float
    best_epoch: int
    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    val_mse: tuple[float, ...]
    l2: float = 0.0
    centered: bool = False
    constant_layer: bool = False
    l2_sweep: tuple[tuple[float, float], ...] = ()


def _check(z: npt.ArrayLike, y: npt.ArrayLike, values: npt.ArrayLike, name: str) -> tuple[F64, F64]:
    logits = np.asarray(z, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if logits.ndim != 3 or labels.shape != (len(logits),) or v.shape != (logits.shape[2],):
        raise ValueError(
            f"{name}: expected Z [N, L, K], y [N] and values [K], got {list(logits.shape)}, "
            f"{list(labels.shape)} and {list(v.shape)}"
        )
    if len(logits) == 0:
        raise ValueError(f"{name}: no items")
    return logits, labels


@dataclass(frozen=True)
class _Settings:
    epochs: int
    lr: float
    batch_size: int
    seed: int


def _train(
    data: tuple[F64, F64, F64, F64],
    values: npt.ArrayLike,
    initial: Sequence[F64],
    weights_of: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    penalty: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None,
    settings: _Settings,
) -> FitResult:
    """Optimise ``initial`` on one thread (see :func:`_optimise`)."""
    import torch

    if settings.epochs < 1 or settings.batch_size < 1 or not settings.lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0: {settings}")

    # Batches of 4 × L × K are far too small for intra-op threads: on a busy two-core machine
    # two threads made a fit ~30× slower than one. The setting is process-wide, so it is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _optimise(data, values, initial, weights_of, penalty, settings)
    finally:
        torch.set_num_threads(threads)


def _optimise(
    data: tuple[F64, F64, F64, F64],
    values: npt.ArrayLike,
    initial: Sequence[F64],
    weights_of: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    penalty: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None,
    settings: _Settings,
) -> FitResult:
    """Optimise ``initial`` parameters (plus the mixing scalar ``a``) on the LAGER loss.

    ``weights_of`` maps the parameters to the aggregation weights ([L] or [L, K]); ``penalty``
    adds a regulariser to each batch's loss. The result holds the best epoch's weights.
    """
    import torch

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    z_train, y_train, z_val, y_val = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    t_train, t_val = (
        torch.from_numpy(nearest_score_index(y, np.asarray(values))) for y in (data[1], data[3])
    )
    params = [torch.nn.Parameter(torch.from_numpy(np.array(p, dtype=np.float64))) for p in initial]
    a = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    optimizer = torch.optim.Adam([*params, a], lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)

    def losses(
        z: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = weights_of(params)
        aggregated = (z * (w[None, :, None] if w.ndim == 1 else w[None])).sum(dim=1)
        score = torch.softmax(aggregated, dim=-1) @ v
        mse = torch.mean((score - y) ** 2)
        mix = torch.sigmoid(a)
        ce = torch.nn.functional.cross_entropy(aggregated, t)
        return mix * ce + (1 - mix) * mse, mse

    train_loss: list[float] = []
    val_loss: list[float] = []
    val_mse: list[float] = []
    best = (float("inf"), np.zeros(0), 0.0, 0)
    for epoch in range(settings.epochs):
        order = torch.randperm(len(z_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss, _ = losses(z_train[batch], y_train[batch], t_train[batch])
            total += loss.item() * len(batch)
            if penalty is not None:
                loss = loss + penalty(params)
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
        train_loss.append(total / len(order))
        with torch.no_grad():
            loss, mse = losses(z_val, y_val, t_val)
            weights = weights_of(params).detach().clone().numpy()
        scheduler.step(float(loss))
        val_loss.append(float(loss))
        val_mse.append(float(mse))
        if float(mse) < best[0]:
            best = (float(mse), weights, torch.sigmoid(a).item(), epoch)
    _, weights, mixing, best_epoch = best
    return FitResult(
        weights, mixing, best_epoch, tuple(train_loss), tuple(val_loss), tuple(val_mse)
    )


def fit_lager(
    z_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    z_val: npt.ArrayLike,
    y_val: npt.ArrayLike,
    values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
    *,
    epochs: int = 3,
    lr: float = 0.01,
    batch_size: int = 4,
    seed: int = 42,
) -> FitResult:
    """LAGER's tuned weights ``w = softmax(θ)`` [L] (θ from 0) for logits ``Z`` [N, L, K] and
    labels ``y`` [N] on the score scale; the best of ``epochs`` epochs on the validation split."""
    z_tr, y_tr = _check(z_train, y_train, values, "train")
    z_va, y_va = _check(z_val, y_val, values, "validation")

    def softmax_weights(params: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.softmax(params[0], dim=0)

    return _train(
        (z_tr, y_tr, z_va, y_va),
        values,
        [np.zeros(z_tr.shape[1])],
        softmax_weights,
        None,
        _Settings(epochs, lr, batch_size, seed),
    )


def fit_signed(
    z_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    z_val: npt.ArrayLike,
    y_val: npt.ArrayLike,
    values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
    *,
    kind: Literal["layer", "layer_score"] = "layer",
    bias: bool = False,
    center: bool = True,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    epochs: int = 3,
    lr: float = 0.01,
    batch_size: int = 4,
    seed: int = 42,
) -> FitResult:
    """Signed weights, w [L] (``kind="layer"``) or W [L, K] (``kind="layer_score"``), fitted once
    per L2 strength in ``l2_grid``; the strength with the lowest validation MSE wins.

    ``center`` fits on :func:`~surety_serving.judge.lager.center_logits` of the logits (see the
    module
    docstring). ``bias=True`` (``layer_score`` only) returns W [L+1, K] whose last row is a
    per-score bias, applied to a constant layer of ones the exporter appends (after centring).
    With w [L] a constant layer would add the same number to every score's logit, which the
    softmax ignores, so a bias needs W.
    """
    if bias and kind != "layer_score":
        raise ValueError("a per-score bias needs kind='layer_score' (see the docstring)")
    if not l2_grid or any(lam < 0 for lam in l2_grid):
        raise ValueError(f"l2_grid must hold non-negative strengths, got {list(l2_grid)}")
    z_tr, y_tr = _check(z_train, y_train, values, "train")
    z_va, y_va = _check(z_val, y_val, values, "validation")
    num_layers, k = z_tr.shape[1:]
    if center:
        z_tr, z_va = center_logits(z_tr), center_logits(z_va)
    if bias:
        z_tr, z_va = append_constant_layer(z_tr), append_constant_layer(z_va)
    shape = (num_layers,) if kind == "layer" else (z_tr.shape[1], k)
    target = np.full(shape, 1.0 / num_layers)
    if bias:
        target[-1] = 0.0

    def identity(params: Sequence[torch.Tensor]) -> torch.Tensor:
        return params[0]

    best: FitResult | None = None
    sweep: list[tuple[float, float]] = []
    for lam in l2_grid:

        def l2(params: Sequence[torch.Tensor], lam: float = lam) -> torch.Tensor:
            return lam * ((params[0] - params[0].new_tensor(target)) ** 2).sum()

        fit = _train(
            (z_tr, y_tr, z_va, y_va),
            values,
            [target],
            identity,
            l2 if lam > 0 else None,
            _Settings(epochs, lr, batch_size, seed),
        )
        mse = fit.val_mse[fit.best_epoch]
        sweep.append((float(lam), mse))
        if best is None or mse < best.val_mse[best.best_epoch]:
            best = replace(fit, l2=float(lam), centered=center, constant_layer=bias)
    assert best is not None  # l2_grid is not empty
    return replace(best, l2_sweep=tuple(sweep))


#: Ridge strengths :func:`fit_probe` tries (on standardised logits, so one grid fits all models).
PROBE_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def fit_probe(
    z_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    z_val: npt.ArrayLike,
    y_val: npt.ArrayLike,
    values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
    *,
    l2_grid: Sequence[float] = PROBE_L2_GRID,
    max_iter: int = 200,
) -> FitResult:
    """A probe of the whole logit lens read through the op: W [L+1, K] (the last row a
    per-score bias on a constant layer) on each layer's logits centred over the K scores,
    fitted by full-batch L-BFGS on the squared error of s* = Σ_k v_k softmax(z̄)_k alone.

    Where LAGER's weights (and the signed ones above, fitted as LAGER's code fits them: Adam on
    mini-batches of raw logits) barely move on SmolLM2's STS-B logits, a ridge regression on the
    same centred logits ranks dev pairs well (docs/judge.md): the signal is there, spread over
    (layer, score) pairs whose scales differ by two orders of magnitude. So the logits are
    standardised per (layer, score) for fitting (the scale is folded back into W, and the shift
    into the bias row, so the served graph centres only), and the fit is the deterministic
    optimum of MSE + λ‖W‖² for each λ of ``l2_grid``; the λ whose expected scores rank the
    validation split best (Spearman, the judge's figure of merit) is kept.
    """
    import torch

    from surety_serving.judge.correlation import spearman

    z_tr, y_tr = _check(z_train, y_train, values, "train")
    z_va, y_va = _check(z_val, y_val, values, "validation")
    c_tr, c_va = center_logits(z_tr), center_logits(z_va)
    mean, scale = c_tr.mean(axis=0), c_tr.std(axis=0) + 1e-6
    x = torch.from_numpy((c_tr - mean) / scale)
    y = torch.from_numpy(y_tr)
    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    best: tuple[float, FitResult] | None = None
    sweep: list[tuple[float, float]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for lam in l2_grid:
            w, b = _probe_optimum(x, y, v, lam, max_iter)
            served = w / scale
            bias = b - (served * mean).sum(axis=0)
            weights = np.concatenate([served, bias[None, :]])
            predicted = _probe_scores(c_va, weights, np.asarray(values, dtype=np.float64))
            rho = spearman(predicted, y_va)
            mse = float(np.mean((predicted - y_va) ** 2))
            sweep.append((float(lam), rho))
            fit = FitResult(
                weights, 0.0, 0, (), (), (mse,), float(lam), centered=True, constant_layer=True
            )
            if best is None or rho > best[0]:
                best = (rho, fit)
    finally:
        torch.set_num_threads(threads)
    assert best is not None, "l2_grid is empty"
    return replace(best[1], l2_sweep=tuple(sweep))


def _probe_optimum(
    x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, lam: float, max_iter: int
) -> tuple[F64, F64]:
    """W [L, K] and bias [K] minimising mean (Σ_k v_k softmax(Σ_l W∘x + b)_k − y)² + λ‖W‖²."""
    import torch

    w = torch.zeros(x.shape[1:], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[2], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        score = torch.softmax((x * w).sum(dim=1) + b, dim=-1) @ v
        loss = torch.mean((score - y) ** 2) + lam * (w**2).sum()
        torch.autograd.backward(loss)
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return w.detach().numpy(), b.detach().numpy()


def _probe_scores(centred: F64, weights: F64, values: F64) -> F64:
    """Expected scores of centred logits with a constant layer appended (what the graph does)."""
    from surety_serving.judge.lager import expected_score

    scores, _ = expected_score(append_constant_layer(centred), weights, values)
    return scores
