"""Float64 numpy references for the ``ai.surety`` ops, with exactly the ops' semantics.

The tests compare the native kernels with these functions, and they are meant for anyone
debugging a model that uses the ops: same inputs, same broadcasting, same treatment of ``-inf``,
``+inf``, NaN and excluded elements, computed in double precision.

Tolerances the kernels are held to (see ``docs/kernels.md``): relative error <= ``RTOL`` on every
output element whose reference magnitude exceeds ``TINY``; exact zeros where the reference is
exactly 0; the same infinities and NaNs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["RTOL", "TINY", "expected_score", "two_pass_softmax"]

RTOL = 1e-5
"""Relative tolerance of the float32 kernels against these float64 references."""

TINY = 1e-30
"""Reference values at or below this magnitude are compared with an absolute tolerance of TINY."""

F64 = npt.NDArray[np.float64]


def _broadcast_rows(
    name: str, value: npt.ArrayLike, target: tuple[int, ...]
) -> npt.NDArray[np.generic]:
    """``value`` broadcast to ``target`` under numpy rules, refusing to grow ``target``."""
    array = np.asarray(value)
    if array.ndim > len(target) or any(
        d not in (1, t) for d, t in zip(array.shape[::-1], target[::-1], strict=False)
    ):
        raise ValueError(f"{name} shape {list(array.shape)} is not broadcastable to {list(target)}")
    return np.broadcast_to(array, target)


def _softmax_rows(z: F64, kept: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
    """Softmax along the last axis over the kept elements of ``z``, and log-sum-exp.

    Rows are classified the way the kernels classify them:

    * a kept NaN makes the whole row NaN (and its log-sum-exp NaN);
    * no kept element, or every kept element ``-inf``: ``y = 0``, log-sum-exp ``-inf``;
    * a kept ``+inf``: the limit, the mass shared equally by the ``+inf`` elements,
      log-sum-exp ``+inf``;
    * otherwise ``exp(z - max) / sum``, log-sum-exp ``max + log(sum)``.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        zk = np.where(kept, z, -np.inf)
        nan_row = np.any(kept & np.isnan(z), axis=-1, keepdims=True)
        zk = np.where(np.isnan(zk), -np.inf, zk)
        if z.shape[-1] == 0:
            top = np.full((*z.shape[:-1], 1), -np.inf)
        else:
            top = np.max(zk, axis=-1, keepdims=True)
        finite = np.isfinite(top)
        shift = np.where(finite, top, 0.0)
        e = np.where(finite, np.exp(zk - shift), 0.0)
        total = np.sum(e, axis=-1, keepdims=True)
        y = np.where(finite, e / np.where(finite, total, 1.0), 0.0)
        lse = np.where(finite, shift + np.log(np.where(finite, total, 1.0)), top)

        inf_row = top == np.inf
        at_inf = zk == np.inf
        share = 1.0 / np.maximum(np.sum(at_inf, axis=-1, keepdims=True), 1)
        y = np.where(inf_row, np.where(at_inf, share, 0.0), y)

        y = np.where(nan_row, np.nan, y)
        lse = np.where(nan_row, np.nan, lse)
    return y.astype(np.float64), lse.astype(np.float64)


def two_pass_softmax(
    x: npt.ArrayLike,
    scale: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
) -> tuple[F64, F64]:
    """Reference of ``ai.surety::TwoPassSoftmax``: ``(Y, log_sum_exp)``.

    Args:
        x: scores ``[..., D]`` (converted to float32, as the op takes them); softmax runs along
            the last axis.
        scale: optional per-row multiplier, broadcastable to ``[..., 1]``. The op multiplies in
            float32 (``z = scale * x`` rounded once, overflowing to ``inf``) and so does this
            reference; everything after that is float64. ``0 * inf`` is NaN (IEEE).
        mask: optional bool, broadcastable to ``x``; ``False`` excludes an element exactly as if
            it were ``-inf`` (a NaN at an excluded position is ignored).

    Returns:
        ``Y`` with the shape of ``x`` and ``log_sum_exp`` with shape ``[..., 1]``, both float64.
        See ``_softmax_rows`` for the treatment of NaN, ``+inf`` and rows with nothing kept.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if x32.ndim == 0:
        raise ValueError("X must have rank >= 1 (softmax is along the last axis)")
    row_shape = (*x32.shape[:-1], 1)
    z32 = x32
    if scale is not None:
        s32 = _broadcast_rows("scale", np.asarray(scale, dtype=np.float32), row_shape).astype(
            np.float32
        )
        with np.errstate(over="ignore", invalid="ignore"):
            z32 = (x32 * s32).astype(np.float32)
    if mask is None:
        kept = np.ones(x32.shape, dtype=bool)
    else:
        kept = _broadcast_rows("mask", np.asarray(mask, dtype=bool), x32.shape).astype(bool)
    return _softmax_rows(z32.astype(np.float64), kept)


def expected_score(
    layer_logits: npt.ArrayLike,
    layer_weights: npt.ArrayLike,
    score_values: npt.ArrayLike,
) -> tuple[F64, F64]:
    """Reference of ``ai.surety::ExpectedScore`` (LAGER's head): ``(expected_score, probs)``.

    Args:
        layer_logits: ``[B, L, K]`` score-token logits from ``L`` layers.
        layer_weights: ``[L]`` aggregation weights, applied as given (not normalised).
        score_values: ``[K]`` the value of each score token.

    Returns:
        ``expected_score[b] = sum_k v_k p[b, k]`` with ``p = softmax(sum_l w_l z[b, l])``, and
        ``p`` itself ``[B, K]``. The softmax follows ``two_pass_softmax`` (NaN rows, ``+inf``
        limits); a row whose aggregated logits are all ``-inf`` has ``p = 0`` and an expected
        score of NaN: there is no distribution to take the expectation over.
    """
    z = np.asarray(layer_logits, dtype=np.float32).astype(np.float64)
    w = np.asarray(layer_weights, dtype=np.float32).astype(np.float64)
    v = np.asarray(score_values, dtype=np.float32).astype(np.float64)
    if z.ndim != 3 or w.ndim != 1 or v.ndim != 1:
        raise ValueError("expected layer_logits [B, L, K], layer_weights [L], score_values [K]")
    if w.shape[0] != z.shape[1] or v.shape[0] != z.shape[2]:
        raise ValueError(
            f"shapes {list(z.shape)}, {list(w.shape)}, {list(v.shape)} are not [B, L, K], [L], [K]"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        aggregated = np.zeros((z.shape[0], z.shape[2]))
        for layer in range(z.shape[1]):
            aggregated = aggregated + w[layer] * z[:, layer, :]
    probs, lse = _softmax_rows(aggregated, np.ones(aggregated.shape, dtype=bool))
    with np.errstate(invalid="ignore"):
        score = np.sum(probs * v, axis=-1)
    empty = lse[:, 0] == -np.inf
    score = np.where(empty, np.nan, score)
    return score.astype(np.float64), probs
