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

__all__ = [
    "ESTIMATORS",
    "PATTERNS",
    "RTOL",
    "TINY",
    "attention_pattern",
    "expected_score",
    "sparse_attention",
    "two_pass_softmax",
]

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
        layer_weights: aggregation weights, applied as given (not normalised): ``[L]``, one per
            layer, or ``[L, K]``, one per layer and score token.
        score_values: ``[K]`` the value of each score token.

    Returns:
        ``expected_score[b] = sum_k v_k p[b, k]`` with ``p = softmax(zbar[b])``, and ``p`` itself
        ``[B, K]``, where ``zbar[b, k] = sum_l w[l] z[b, l, k]`` (``[L]`` weights) or
        ``sum_l w[l, k] z[b, l, k]`` (``[L, K]`` weights). The softmax follows
        ``two_pass_softmax`` (NaN rows, ``+inf`` limits); a row whose aggregated logits are all
        ``-inf`` has ``p = 0`` and an expected score of NaN: there is no distribution to take the
        expectation over.
    """
    z = np.asarray(layer_logits, dtype=np.float32).astype(np.float64)
    w = np.asarray(layer_weights, dtype=np.float32).astype(np.float64)
    v = np.asarray(score_values, dtype=np.float32).astype(np.float64)
    if z.ndim != 3 or w.shape not in ((z.shape[1],), z.shape[1:]) or v.shape != (z.shape[2],):
        raise ValueError(
            f"shapes {list(z.shape)}, {list(w.shape)}, {list(v.shape)} are not "
            "[B, L, K], [L] or [L, K], [K]"
        )
    per_score = w if w.ndim == 2 else w[:, None]  # [L] as [L, 1], broadcast along K
    with np.errstate(invalid="ignore", over="ignore"):
        aggregated = np.zeros((z.shape[0], z.shape[2]))
        for layer in range(z.shape[1]):
            aggregated = aggregated + per_score[layer] * z[:, layer, :]
    probs, lse = _softmax_rows(aggregated, np.ones(aggregated.shape, dtype=bool))
    with np.errstate(invalid="ignore"):
        score = np.sum(probs * v, axis=-1)
    empty = lse[:, 0] == -np.inf
    score = np.where(empty, np.nan, score)
    return score.astype(np.float64), probs


PATTERNS = ("dense", "band", "block_local_global")
"""Sparse sets of ``ai.surety::SparseAttention``: which keys a query attends to exactly."""

ESTIMATORS = ("none", "sampled", "gaussian")
"""How ``SparseAttention`` accounts for the softmax mass outside the sparse set."""


def attention_pattern(
    queries: int,
    keys: int,
    pattern: str,
    *,
    window: int = 0,
    density: float = 0.0,
    block_size: int = 64,
    num_local_blocks: int = 1,
    num_global: int = 0,
) -> npt.NDArray[np.bool_]:
    """The sparse set as a bool [S, T] (True = attended exactly), before padding and causality.

    * ``dense``: every key.
    * ``band``: |i − j| ≤ window // 2, with ``window`` = max(1, ⌊T·density⌋) when it is 0
      (Re-ttention's band on the flattened index).
    * ``block_local_global``: query block ⌊i/b⌋ and key block ⌊j/b⌋ at most ``num_local_blocks``
      apart (b = ``block_size``), plus the first ``num_global`` tokens, which attend to every key
      and are attended by every query (Longformer / BigBird's global tokens).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is not one of {PATTERNS}")
    i = np.arange(queries)[:, None]
    j = np.arange(keys)[None, :]
    if pattern == "dense":
        return np.ones((queries, keys), dtype=bool)
    if pattern == "band":
        if window <= 0:
            if not 0.0 < density <= 1.0:
                raise ValueError("band needs window > 0 or density in (0, 1]")
            window = max(1, int(np.floor(keys * density)))
        return np.asarray(np.abs(i - j) <= window // 2)
    if block_size <= 0 or num_local_blocks < 0 or num_global < 0:
        raise ValueError(
            "block_local_global needs block_size > 0, num_local_blocks, num_global >= 0"
        )
    local = np.abs(i // block_size - j // block_size) <= num_local_blocks
    return np.asarray(local | (i < num_global) | (j < num_global))


def _masked_lse_and_output(s: F64, kept: npt.NDArray[np.bool_], v: F64) -> tuple[F64, F64]:
    """Per row: log Σ_{kept} e^{s} (−inf when nothing is kept) and softmax_{kept}(s) · V."""
    probabilities, lse = _softmax_rows(s, kept)
    return lse[..., 0], probabilities @ v


def sparse_attention(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    num_heads: int,
    *,
    key_padding_mask: npt.ArrayLike | None = None,
    scale: float = 0.0,
    causal: bool = False,
    pattern: str = "dense",
    window: int = 0,
    density: float = 0.0,
    block_size: int = 64,
    num_local_blocks: int = 1,
    num_global: int = 0,
    estimator: str = "none",
    sample_stride: int = 32,
) -> tuple[F64, F64]:
    """Reference of ``ai.surety::SparseAttention``: ``(Y [B, S, H·dv], rho [B, H, S])``.

    Layout BSNH as ORT's MultiHeadAttention: ``q`` [B, S, H·d], ``k`` [B, T, H·d], ``v``
    [B, T, H·dv]; ``key_padding_mask`` [B, T] (nonzero = keep). Scores s_ij = scale · q_i · k_j
    (scale 0 → 1/√d). A query's allowed keys A_i are those the padding mask keeps (and j ≤ i
    when causal); its sparse set is S_i = pattern ∩ A_i, the rest of A_i is out of the set.

    With D_S = Σ_{S_i} e^{s}, O_S = softmax over S_i of s times V, and an estimate of the
    out-of-set mass D̂_out and output Ô_out, the output is the convex combination

        Y_i = ρ̂_i · O_S + (1 − ρ̂_i) · Ô_out,   ρ̂_i = D_S / (D_S + D̂_out)

    (Re-ttention's reshaping, single pass): dense attention is exactly ρ·O_S + (1 − ρ)·O_out.

    * ``none``: ρ̂ = 1 (the plain renormalised sparse softmax).
    * ``sampled``: rows 0, stride, 2·stride, … and the last are computed densely (there ρ and
      O_out are exact, so Y is dense attention); other rows interpolate ρ and O_out linearly
      between the sampled rows around them.
    * ``gaussian``: keys and values of each (batch, head) taken as jointly Gaussian over the
      keys the padding mask keeps (population moments μ_k, Σ_kk, μ_v, Σ_vk); with u = scale·q_i,
      D̂_out = n_out · exp(u·μ_k + ½ uᵀΣ_kk u) and Ô_out = μ_v + Σ_vk u (the mean of v under
      weights e^{u·k}), n_out = |A_i \\ S_i|.

    A row with no allowed key gives Y = 0 and ρ = 0; a row with nothing out of the set has
    ρ̂ = 1; a row whose sparse set is empty but has allowed keys gives ρ̂ = 0, Y = Ô_out.
    Inputs are rounded to float32 as the op takes them; the arithmetic is float64.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is not one of {ESTIMATORS}")
    if sample_stride <= 0:
        raise ValueError("sample_stride must be positive")
    q64, k64, v64 = (np.asarray(x, dtype=np.float32).astype(np.float64) for x in (q, k, v))
    if q64.ndim != 3 or k64.ndim != 3 or v64.ndim != 3:
        raise ValueError("Q, K, V must be [B, S, H·d], [B, T, H·d], [B, T, H·dv]")
    batch, queries, width = q64.shape
    if num_heads <= 0 or width % num_heads or v64.shape[2] % num_heads:
        raise ValueError(f"num_heads {num_heads} does not divide Q width {width} / V width")
    if k64.shape[:1] != (batch,) or v64.shape[:2] != k64.shape[:2] or k64.shape[2] != width:
        raise ValueError(
            f"shapes Q {list(q64.shape)}, K {list(k64.shape)}, V {list(v64.shape)} disagree"
        )
    keys = k64.shape[1]
    d, dv = width // num_heads, v64.shape[2] // num_heads
    factor = scale if scale != 0.0 else 1.0 / np.sqrt(d)
    padding = (
        np.ones((batch, keys), dtype=bool)
        if key_padding_mask is None
        else _broadcast_rows("key_padding_mask", np.asarray(key_padding_mask) != 0, (batch, keys))
    )
    sparse = attention_pattern(
        queries, keys, pattern, window=window, density=density, block_size=block_size,
        num_local_blocks=num_local_blocks, num_global=num_global,
    )  # fmt: skip
    order = np.arange(queries)[:, None] >= np.arange(keys)[None, :]
    y = np.zeros((batch, queries, num_heads, dv))
    rho = np.zeros((batch, num_heads, queries))
    for b in range(batch):
        allowed = np.broadcast_to(padding[b][None, :], (queries, keys))
        if causal:
            allowed = allowed & order
        in_set, out_set = allowed & sparse, allowed & ~sparse
        n_out = out_set.sum(axis=1)
        live: npt.NDArray[np.bool_] = np.asarray(allowed.any(axis=1))
        for h in range(num_heads):
            qh = q64[b, :, h * d : (h + 1) * d]
            kh = k64[b, :, h * d : (h + 1) * d]
            vh = v64[b, :, h * dv : (h + 1) * dv]
            s = factor * qh @ kh.T
            lse_s, o_s = _masked_lse_and_output(s, in_set, vh)
            weight, o_out = _out_of_set(
                estimator, s, lse_s, out_set, factor * qh, kh, vh, padding[b], sample_stride
            )
            weight = np.where(n_out == 0, 1.0, weight)
            weight = np.where(live, weight, 0.0)
            out = weight[:, None] * o_s + (1.0 - weight)[:, None] * o_out
            y[b, :, h, :] = np.where(live[:, None], out, 0.0)
            rho[b, h, :] = weight
    return y.reshape(batch, queries, num_heads * dv), rho


def _kept_mass(lse_s: F64, log_out: F64) -> F64:
    """ρ = D_S / (D_S + D_out) from log-masses (1 when D_out = 0, 0 when D_S = 0 < D_out)."""
    with np.errstate(invalid="ignore"):
        rho = np.exp(lse_s - np.logaddexp(lse_s, log_out))
    return np.where(log_out == -np.inf, 1.0, np.where(lse_s == -np.inf, 0.0, rho))


def _out_of_set(
    estimator: str,
    s: F64,
    lse_s: F64,
    out_set: npt.NDArray[np.bool_],
    u: F64,
    k: F64,
    v: F64,
    padding: npt.NDArray[np.bool_],
    stride: int,
) -> tuple[F64, F64]:
    """(ρ̂ [S], Ô_out [S, dv]) of one (batch, head) for the estimator."""
    rows = s.shape[0]
    if estimator == "none":
        return np.ones(rows), np.zeros((rows, v.shape[1]))
    if estimator == "sampled":
        sampled = np.unique(np.r_[np.arange(0, rows, stride), rows - 1])
        lse_out, o_out = _masked_lse_and_output(s[sampled], out_set[sampled], v)
        rho = _kept_mass(lse_s[sampled], lse_out)
        position = np.arange(rows)
        outputs = np.stack(
            [np.interp(position, sampled, o_out[:, c]) for c in range(v.shape[1])], axis=1
        )
        return np.interp(position, sampled, rho), outputs.reshape(rows, v.shape[1])
    kept_k, kept_v = k[padding], v[padding]
    if len(kept_k) == 0:
        return np.ones(rows), np.zeros((rows, v.shape[1]))
    mu_k, mu_v = kept_k.mean(axis=0), kept_v.mean(axis=0)
    centred_k, centred_v = kept_k - mu_k, kept_v - mu_v
    sigma_kk = centred_k.T @ centred_k / len(kept_k)
    sigma_vk = centred_v.T @ centred_k / len(kept_k)
    n_out = out_set.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_out = np.log(n_out) + u @ mu_k + 0.5 * np.einsum("id,de,ie->i", u, sigma_kk, u)
    return _kept_mass(lse_s, log_out), mu_v + u @ sigma_vk.T
