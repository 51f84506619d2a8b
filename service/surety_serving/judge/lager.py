"""LAGER's scoring mathematics (Lai et al., NeurIPS 2025), in float64 numpy, with the baselines.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_SCORE_VALUES",
    "aggregate_logits",
    "append_constant_layer",
    "center_logits",
    "escore",
    "expected_score",
    "layer_scores",
    "nearest_score_index",
    "probability_aggregation",
    "rescale",
    "softmax",
    "uniform_weights",
    "vscore",
]

F64 = npt.NDArray[np.float64]

DEFAULT_SCORE_VALUES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
"""The values of the score tokens "1".."5" of the judge prompt."""


def _logits(layer_logits: npt.ArrayLike) -> F64:
    z = np.asarray(layer_logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"layer_logits must be [B, L, K], got shape {list(z.shape)}")
    return z


def _values(score_values: npt.ArrayLike, k: int) -> F64:
    v = np.asarray(score_values, dtype=np.float64)
    if v.shape != (k,):
        raise ValueError(f"score_values must be [K] = [{k}], got shape {list(v.shape)}")
    return v


def softmax(z: npt.ArrayLike, axis: int = -1) -> F64:
    """``exp(z − max z) / Σ exp(z − max z)`` along ``axis``: subtracting the maximum keeps every
    exponent ≤ 0, so large logits cannot overflow (the result is mathematically unchanged)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    result: F64 = e / np.sum(e, axis=axis, keepdims=True)
    return result


def aggregate_logits(layer_logits: npt.ArrayLike, layer_weights: npt.ArrayLike) -> F64:
    """``z̄`` [B, K]: Σ_l w_l Z[:, l, :] for ``w`` [L], or Σ_l W[l, k] Z[:, l, k] for ``W`` [L, K].

    Weights are applied as given (LAGER's tuned weights sum to 1, signed ones need not).
    """
    z = _logits(layer_logits)
    w = np.asarray(layer_weights, dtype=np.float64)
    _, num_layers, k = z.shape
    if w.shape == (num_layers,):
        w = w[:, None]
    elif w.shape != (num_layers, k):
        raise ValueError(
            f"layer_weights must be [L] = [{num_layers}] or [L, K] = [{num_layers}, {k}], "
            f"got shape {list(w.shape)}"
        )
    result: F64 = np.sum(z * w[None], axis=1)
    return result


def expected_score(
    layer_logits: npt.ArrayLike,
    layer_weights: npt.ArrayLike,
    score_values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
) -> tuple[F64, F64]:
    """LAGER's score: ``(s* [B], P [B, K])`` with ``P = softmax(z̄)`` and ``s* = Σ_k v_k P_k``.

    ``layer_weights`` is [L] or [L, K] (see :func:`aggregate_logits`).
    """
    aggregated = aggregate_logits(layer_logits, layer_weights)
    v = _values(score_values, aggregated.shape[1])
    probabilities = softmax(aggregated)
    return probabilities @ v, probabilities


def uniform_weights(num_layers: int) -> F64:
    """LAGER without tuning: ``1/L`` for each of the ``L`` entries (the mean of the logits, not
    their sum, which would sharpen the softmax L-fold)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    return np.full(num_layers, 1.0 / num_layers)


def layer_scores(
    layer_logits: npt.ArrayLike, score_values: npt.ArrayLike = DEFAULT_SCORE_VALUES
) -> F64:
    """Each layer's own expected score, [B, L]: E-Score of every layer of the logit lens."""
    z = _logits(layer_logits)
    result: F64 = softmax(z) @ _values(score_values, z.shape[2])
    return result


def escore(
    layer_logits: npt.ArrayLike,
    score_values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
    layer: int = -1,
) -> F64:
    """E-Score (G-Eval): the expectation of the score under one layer's softmax, by default the
    final (post-norm) entry, whose logits are the model's own."""
    z = _logits(layer_logits)
    result: F64 = softmax(z[:, layer, :]) @ _values(score_values, z.shape[2])
    return result


def vscore(
    layer_logits: npt.ArrayLike,
    score_values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
    layer: int = -1,
) -> F64:
    """VScore: the value of the most likely score token at one layer (default the final one),
    i.e. what greedy decoding writes. Ties go to the first (lowest-index) token."""
    z = _logits(layer_logits)
    v = _values(score_values, z.shape[2])
    result: F64 = v[np.argmax(z[:, layer, :], axis=-1)]
    return result


def probability_aggregation(
    layer_logits: npt.ArrayLike,
    layer_weights: npt.ArrayLike,
    score_values: npt.ArrayLike = DEFAULT_SCORE_VALUES,
) -> tuple[F64, F64]:
    """The ablation LAGER compares against: ``P = Σ_l w_l softmax(z_l) / Σ_l w_l``, ``s* = v·P``.

    ``layer_weights`` is [L] and non-negative (a mixture of distributions); it is normalised.
    """
    z = _logits(layer_logits)
    w = np.asarray(layer_weights, dtype=np.float64)
    if w.shape != (z.shape[1],) or np.any(w < 0) or not np.sum(w) > 0:
        raise ValueError(f"layer_weights must be [L] = [{z.shape[1]}], non-negative, not all 0")
    probabilities: F64 = np.einsum("blk,l->bk", softmax(z), w / np.sum(w))
    return probabilities @ _values(score_values, z.shape[2]), probabilities


def append_constant_layer(layer_logits: npt.ArrayLike) -> F64:
    """``Z`` with one more "layer" of ones, [B, L+1, K]: with weights ``W`` [L+1, K] its row
    ``W[L]`` is a per-score bias, so the op needs no bias input (the exporter appends the same
    constant layer to the graph's ``layer_logits``)."""
    z = _logits(layer_logits)
    return np.concatenate([z, np.ones((z.shape[0], 1, z.shape[2]))], axis=1)


def center_logits(layer_logits: npt.ArrayLike) -> F64:
    """Each layer's logits minus their mean over the K scores, [B, L, K].

    The softmax ignores a shift shared by all K logits, so with weights w [L] centring changes
    nothing. With W [L, K] it does: ``W[l, k]·(m_l + d_{l,k})`` turns a layer's common level
    ``m_l`` into a different offset per score. On a raw logit lens that level is large and
    varies from item to item (residual-stream norms grow with depth; on SmolLM2-135M the mean
    |z| reaches ~250 at some layers against ~30 after the final norm), and it swamps the
    differences between the scores, which are the signal. Centring removes it; it cannot be
    folded into W, so a graph whose weights were fitted on centred logits must centre too.
    """
    z = _logits(layer_logits)
    result: F64 = z - z.mean(axis=2, keepdims=True)
    return result


def rescale(
    y: npt.ArrayLike,
    source: tuple[float, float] = (0.0, 5.0),
    target: tuple[float, float] = (1.0, 5.0),
) -> F64:
    """Map human scores linearly from ``source`` onto the judge's ``target`` range: STS-B's 0..5
    similarity becomes ``1 + 4·y/5`` on the 1..5 score scale by default."""
    (a, b), (c, d) = source, target
    result: F64 = c + (d - c) * (np.asarray(y, dtype=np.float64) - a) / (b - a)
    return result


def nearest_score_index(
    y: npt.ArrayLike, score_values: npt.ArrayLike = DEFAULT_SCORE_VALUES
) -> npt.NDArray[np.int64]:
    """The index of the score value nearest to each label: the cross-entropy target for labels
    on the score scale that are not integers (STS-B's are averages of several annotators).
    A label half-way between two values goes to the lower one."""
    y = np.asarray(y, dtype=np.float64)
    v = np.asarray(score_values, dtype=np.float64)
    result: npt.NDArray[np.int64] = np.argmin(np.abs(y[..., None] - v), axis=-1).astype(np.int64)
    return result
