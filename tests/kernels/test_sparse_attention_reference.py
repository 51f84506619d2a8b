"""The float64 twin of ``ai.surety::SparseAttention``: patterns, masks and the mass estimators,
checked against attention written out directly."""

from __future__ import annotations

import numpy as np
import pytest

from surety_serving.kernels.reference import ESTIMATORS, attention_pattern, sparse_attention

pytestmark = pytest.mark.unit


def direct_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, kept: np.ndarray
) -> np.ndarray:
    """softmax over the kept keys of each (batch, head, query), written out row by row."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, queries, width = q.shape
    d, dv = width // heads, v.shape[2] // heads
    out = np.zeros((batch, queries, heads * dv))
    for b in range(batch):
        for h in range(heads):
            for i in range(queries):
                keep = kept[b, i]
                if not keep.any():
                    continue
                s = q[b, i, h * d : (h + 1) * d] @ k[b, keep, h * d : (h + 1) * d].T / np.sqrt(d)
                p = np.exp(s - s.max())
                out[b, i, h * dv : (h + 1) * dv] = (p / p.sum()) @ v[b, keep, h * dv : (h + 1) * dv]
    return out


def inputs(rng: np.random.Generator, b: int, s: int, t: int, heads: int, d: int, dv: int):
    q = rng.normal(size=(b, s, heads * d)).astype(np.float32)
    k = rng.normal(size=(b, t, heads * d)).astype(np.float32)
    v = rng.normal(size=(b, t, heads * dv)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_dense_pattern_is_attention_whatever_the_estimator(estimator: str, causal: bool) -> None:
    rng = np.random.default_rng(0)
    q, k, v = inputs(rng, 2, 9, 9, 2, 8, 5)
    padding = np.ones((2, 9), dtype=np.int64)
    padding[1, 6:] = 0
    y, rho = sparse_attention(
        q, k, v, 2, key_padding_mask=padding, causal=causal, estimator=estimator
    )
    kept = np.broadcast_to(padding[:, None, :] != 0, (2, 9, 9)).copy()
    if causal:
        kept &= np.tril(np.ones((9, 9), dtype=bool))[None]
    np.testing.assert_allclose(y, direct_attention(q, k, v, 2, kept), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(rho, 1.0)


def test_band_without_estimator_renormalises_over_the_band() -> None:
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, 1, 11, 13, 3, 4, 6)
    y, _ = sparse_attention(q, k, v, 3, pattern="band", window=4)
    band = attention_pattern(11, 13, "band", window=4)
    np.testing.assert_allclose(y, direct_attention(q, k, v, 3, band[None]), rtol=1e-10)


def test_patterns() -> None:
    band = attention_pattern(6, 6, "band", density=0.5)  # window 3: one key each side
    assert band.sum(axis=1).tolist() == [2, 3, 3, 3, 3, 2]
    blocks = attention_pattern(8, 8, "block_local_global", block_size=2, num_local_blocks=0,
                               num_global=1)  # fmt: skip
    assert blocks[0].all() and blocks[:, 0].all()  # the global token, both ways
    assert blocks[2, 3] and not blocks[2, 4] and not blocks[5, 2]
    with pytest.raises(ValueError, match="pattern"):
        attention_pattern(4, 4, "strided")
    with pytest.raises(ValueError, match="density"):
        attention_pattern(4, 4, "band")


def test_sampled_rows_are_exact_dense_attention() -> None:
    rng = np.random.default_rng(2)
    q, k, v = inputs(rng, 1, 20, 20, 1, 8, 4)
    y, rho = sparse_attention(q, k, v, 1, pattern="band", window=4, estimator="sampled",
                              sample_stride=6)  # fmt: skip
    dense = direct_attention(q, k, v, 1, np.ones((1, 20, 20), dtype=bool))
    for row in (0, 6, 12, 18, 19):
        np.testing.assert_allclose(y[0, row], dense[0, row], rtol=1e-10)
    assert np.all((rho > 0) & (rho < 1))


def test_estimators_recover_the_mass_outside_a_narrow_band() -> None:
    # Diffuse attention over Gaussian keys: a 5-key band holds little of the mass, so the plain
    # renormalised band is far off, and both estimators must at least halve its error.
    rng = np.random.default_rng(3)
    s, heads, d = 256, 2, 16
    q = (rng.normal(size=(1, s, heads * d)) * 0.5).astype(np.float32)
    k = (rng.normal(size=(1, s, heads * d)) * 0.5).astype(np.float32)
    v = (rng.normal(size=(1, s, heads * d)) + k).astype(np.float32)  # values correlate with keys
    dense, _ = sparse_attention(q, k, v, heads)

    def error(estimator: str) -> float:
        y, _ = sparse_attention(q, k, v, heads, pattern="band", window=4, estimator=estimator,
                                sample_stride=8)  # fmt: skip
        return float(np.linalg.norm(y - dense) / np.linalg.norm(dense))

    plain = error("none")
    assert plain > 0.3
    assert error("sampled") <= plain / 2
    assert error("gaussian") <= plain / 2


def test_rows_without_allowed_keys_are_zero() -> None:
    rng = np.random.default_rng(4)
    q, k, v = inputs(rng, 2, 5, 7, 1, 4, 3)
    padding = np.ones((2, 7), dtype=bool)
    padding[0] = False
    for estimator in ESTIMATORS:
        y, rho = sparse_attention(q, k, v, 1, key_padding_mask=padding, pattern="band",
                                  window=2, estimator=estimator)  # fmt: skip
        assert np.all(y[0] == 0.0) and np.all(rho[0] == 0.0)
        assert np.all(np.isfinite(y)) and np.any(y[1] != 0.0)


def test_bad_arguments() -> None:
    q = np.zeros((1, 4, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="num_heads"):
        sparse_attention(q, q, q, 4)
    with pytest.raises(ValueError, match="estimator"):
        sparse_attention(q, q, q, 2, estimator="exact")
    with pytest.raises(ValueError, match="disagree"):
        sparse_attention(q, np.zeros((2, 4, 6), dtype=np.float32), q, 2)
