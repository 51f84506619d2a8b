"""ai.surety::SparseAttention against its float64 twin (kernels.reference.sparse_attention), on
every ISA path: patterns × estimators × causality, head widths that leave every column tail of
the packed buffers, query and key counts around the 64-wide tiles, padding and fully masked rows,
extreme scores, threads, and bad input."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from surety_serving import kernels
from surety_serving.kernels import reference
from tests.kernels.conftest import make_session

pytestmark = pytest.mark.unit

F32 = npt.NDArray[np.float32]

#: Pattern attributes used throughout: narrow enough that every estimator has mass to correct.
PATTERNS: dict[str, dict[str, Any]] = {
    "dense": {},
    "band": {"window": 21},
    "band_density": {"pattern": "band", "density": 0.125},
    "block_local_global": {"block_size": 16, "num_local_blocks": 1, "num_global": 3},
}


def attention_model(
    *,
    mask: bool = True,
    mask_type: int = TensorProto.INT64,
    rho: bool = True,
    **attributes: Any,
) -> onnx.ModelProto:
    inputs = ["Q", "K", "V", "key_padding_mask" if mask else ""]
    while not inputs[-1]:
        inputs.pop()
    outputs = ["Y", "rho"] if rho else ["Y"]
    node = helper.make_node(
        "SparseAttention", inputs, outputs, domain=kernels.DOMAIN, name="attention", **attributes
    )
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "QKV"]
    if mask:
        graph_inputs.append(helper.make_tensor_value_info("key_padding_mask", mask_type, None))
    graph = helper.make_graph(
        [node],
        "sparse_attention",
        graph_inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(kernels.DOMAIN, kernels.OPSET_VERSION),
        ],
    )


def pattern_attributes(name: str) -> dict[str, Any]:
    attributes = dict(PATTERNS[name])
    attributes.setdefault("pattern", name)
    return attributes


def qkv(
    rng: np.random.Generator, b: int, s: int, t: int, heads: int, d: int, dv: int
) -> tuple[F32, F32, F32]:
    q = rng.normal(size=(b, s, heads * d)).astype(np.float32)
    k = rng.normal(size=(b, t, heads * d)).astype(np.float32)
    v = rng.normal(1.0, 1.0, size=(b, t, heads * dv)).astype(np.float32)
    return q, k, v


def padding(rng: np.random.Generator, b: int, t: int) -> npt.NDArray[np.int64]:
    """Random holes, a dropped prefix in row 0 and a dropped tail in the last row."""
    keep = (rng.random((b, t)) < 0.9).astype(np.int64)
    keep[0, : min(3, t)] = 0
    keep[-1, t - t // 4 :] = 0
    return keep


def run(session: ort.InferenceSession, feeds: dict[str, Any]) -> list[Any]:
    return list(session.run(None, feeds))


def assert_close(actual: F32, expected: npt.NDArray[np.float64], what: str) -> None:
    """Outputs are weighted sums of V rows: the error is measured against the size of those rows
    (1e-5 of max(1, |reference|∞)), NaN positions and exact zeros must agree."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), f"{what}: NaN positions")
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(actual[expected == 0], 0.0, f"{what}: exact zeros")
    bound = reference.RTOL * max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    err = np.abs(actual[finite].astype(np.float64) - expected[finite])
    assert err.max(initial=0.0) <= bound, f"{what}: max error {err.max():.3g} > {bound:.3g}"


def check(
    isa: str | None,
    q: F32,
    k: F32,
    v: F32,
    heads: int,
    keep: npt.NDArray[Any] | None,
    **attributes: Any,
) -> None:
    session = make_session(
        attention_model(mask=keep is not None, num_heads=heads, **attributes), isa=isa
    )
    feeds: dict[str, Any] = {"Q": q, "K": k, "V": v}
    if keep is not None:
        feeds["key_padding_mask"] = keep
    y, rho = run(session, feeds)
    ref_y, ref_rho = reference.sparse_attention(
        q,
        k,
        v,
        heads,
        key_padding_mask=keep,
        **{**attributes, "causal": bool(attributes.get("causal", 0))},
    )
    assert y.dtype == np.float32 and rho.dtype == np.float32
    assert_close(y, ref_y, "Y")
    assert_close(rho, ref_rho, "rho")


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("estimator", reference.ESTIMATORS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_and_estimators(isa: str, pattern: str, estimator: str, causal: int) -> None:
    """S ≠ T, neither a multiple of the tile, B > 1, d ≠ dv, padding holes."""
    rng = np.random.default_rng(len(pattern) * 10 + causal)
    q, k, v = qkv(rng, 3, 131, 97, 2, 80, 48)
    check(
        isa, q, k, v, 2, padding(rng, 3, 97),
        estimator=estimator, causal=causal, sample_stride=9, **pattern_attributes(pattern),
    )  # fmt: skip


@pytest.mark.parametrize(("d", "dv"), [(32, 32), (64, 64), (80, 80), (64, 40), (8, 24), (24, 8)])
@pytest.mark.parametrize("estimator", reference.ESTIMATORS)
def test_head_widths(isa: str, d: int, dv: int, estimator: str) -> None:
    rng = np.random.default_rng(d * 100 + dv)
    q, k, v = qkv(rng, 2, 70, 90, 3, d, dv)
    check(isa, q, k, v, 3, padding(rng, 2, 90), estimator=estimator, pattern="band", window=31)


@pytest.mark.parametrize("dv", range(1, 34))
def test_value_width_tails(isa: str, dv: int) -> None:
    """Every tail of the 16-column packing of V (and of the microkernels' column blocks)."""
    rng = np.random.default_rng(dv)
    q, k, v = qkv(rng, 1, 9, 20, 2, 16, dv)
    check(isa, q, k, v, 2, None, estimator="gaussian", pattern="band", window=7)


@pytest.mark.parametrize("d", [1, 2, 3, 7, 15, 17, 33])
def test_key_width_tails(isa: str, d: int) -> None:
    rng = np.random.default_rng(d)
    q, k, v = qkv(rng, 1, 9, 20, 2, d, 5)
    check(isa, q, k, v, 2, None, estimator="gaussian", pattern="band", window=7)


@pytest.mark.parametrize("count", [1, 2, 5, 63, 64, 65, 127, 128, 129, 255, 256, 257])
def test_query_and_key_counts(isa: str, count: int) -> None:
    """Counts around the tiles (64 queries; 64 keys, 128 for the dense pattern), as queries and
    as keys."""
    rng = np.random.default_rng(count)
    sparse_set = {"pattern": "block_local_global", "block_size": 8, "num_local_blocks": 2,
                  "num_global": 2}  # fmt: skip
    for s, t in ((count, 70), (70, count), (count, count)):
        q, k, v = qkv(rng, 2, s, t, 2, 16, 16)
        keep = padding(rng, 2, t)
        check(isa, q, k, v, 2, keep, pattern="dense", causal=1)
        for estimator in reference.ESTIMATORS:
            check(isa, q, k, v, 2, keep, estimator=estimator, sample_stride=5, **sparse_set)


@pytest.mark.parametrize("estimator", reference.ESTIMATORS)
def test_fully_masked_rows(isa: str, estimator: str) -> None:
    """A batch row with every key dropped, and causal queries before the first kept key, give
    Y = 0 and ρ = 0, never NaN."""
    rng = np.random.default_rng(5)
    q, k, v = qkv(rng, 3, 40, 40, 2, 16, 8)
    keep = np.ones((3, 40), dtype=np.int64)
    keep[1] = 0
    keep[2, :10] = 0
    session = make_session(
        attention_model(num_heads=2, causal=1, pattern="band", window=9, estimator=estimator),
        isa=isa,
    )
    y, rho = run(session, {"Q": q, "K": k, "V": v, "key_padding_mask": keep})
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[1], 0.0)
    np.testing.assert_array_equal(rho[1], 0.0)
    np.testing.assert_array_equal(y[2, :10], 0.0)
    np.testing.assert_array_equal(rho[2, :, :10], 0.0)
    check(isa, q, k, v, 2, keep, causal=1, pattern="band", window=9, estimator=estimator)


@pytest.mark.parametrize("magnitude", [1e2, 1e4])
@pytest.mark.parametrize("estimator", ["none", "sampled"])
def test_huge_scores(isa: str, magnitude: float, estimator: str) -> None:
    """Scores far beyond exp's range: the online softmax subtracts the running maximum."""
    rng = np.random.default_rng(int(magnitude))
    q, k, v = qkv(rng, 2, 100, 150, 2, 16, 8)
    q *= np.float32(magnitude)
    check(isa, q, k, v, 2, padding(rng, 2, 150), pattern="band", window=33, estimator=estimator)


def test_nan_stays_in_its_row(isa: str) -> None:
    """A NaN in one query poisons that query's output only."""
    rng = np.random.default_rng(11)
    q, k, v = qkv(rng, 2, 70, 70, 2, 16, 8)
    q[1, 5, 3] = np.nan  # batch 1, query 5, head 0
    session = make_session(
        attention_model(num_heads=2, mask=False, pattern="band", window=9), isa=isa
    )
    y, rho = run(session, {"Q": q, "K": k, "V": v})
    assert np.isnan(y[1, 5, :8]).all() and np.isnan(rho[1, 0, 5])
    nan = np.isnan(y)
    nan[1, 5, :8] = False
    assert not nan.any()
    ref_y, _ = reference.sparse_attention(q, k, v, 2, pattern="band", window=9)
    assert_close(y[0], ref_y[0], "Y of the clean batch row")


@pytest.mark.parametrize("dtype", [np.bool_, np.int32, np.int64])
def test_mask_types(dtype: type[np.generic]) -> None:
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, 2, 30, 30, 2, 16, 8)
    keep = padding(rng, 2, 30)
    mask_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    session = make_session(attention_model(num_heads=2, mask_type=mask_type, pattern="dense"))
    (y, _) = run(session, {"Q": q, "K": k, "V": v, "key_padding_mask": keep.astype(dtype)})
    ref_y, _ = reference.sparse_attention(q, k, v, 2, key_padding_mask=keep)
    assert_close(y, ref_y, "Y")


def test_without_mask_and_rho() -> None:
    rng = np.random.default_rng(4)
    q, k, v = qkv(rng, 2, 30, 45, 4, 8, 8)
    session = make_session(attention_model(num_heads=4, mask=False, rho=False, scale=0.3))
    (y,) = run(session, {"Q": q, "K": k, "V": v})
    ref_y, _ = reference.sparse_attention(q, k, v, 4, scale=0.3)
    assert_close(y, ref_y, "Y")


@pytest.mark.parametrize("estimator", reference.ESTIMATORS)
def test_threads(isa: str, estimator: str) -> None:
    """Tasks are (batch, head, query tile) whatever the thread count: bitwise equal results for
    1 and 2 threads, and for concurrent runs of one session."""
    rng = np.random.default_rng(9)
    q, k, v = qkv(rng, 2, 300, 300, 3, 32, 32)
    keep = padding(rng, 2, 300)
    feeds = {"Q": q, "K": k, "V": v, "key_padding_mask": keep}
    model = attention_model(
        num_heads=3, pattern="band", window=40, estimator=estimator, sample_stride=16
    )
    one = run(make_session(model, isa=isa, threads=1), feeds)
    session = make_session(model, isa=isa, threads=2)
    for got, want in zip(run(session, feeds), one, strict=True):
        np.testing.assert_array_equal(got, want)
    results: list[list[Any]] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        results.append(run(session, feeds))

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 4
    for result in results:
        for got, want in zip(result, one, strict=True):
            np.testing.assert_array_equal(got, want)


# --- bad input: an ORT error naming the op and the problem ------------------------------------


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 5, 8), (2, 6, 8), (2, 5, 8)), "batch and key counts disagree"),
        (((2, 5, 8), (3, 5, 8), (3, 5, 8)), "batch and key counts disagree"),
        (((2, 5, 8), (2, 5, 12), (2, 5, 8)), "Q and K widths differ"),
        (((2, 5, 6), (2, 5, 6), (2, 5, 8)), "num_heads must divide"),
        (((2, 5, 8), (2, 5, 8), (2, 5, 6)), "num_heads must divide"),
        (((2, 5), (2, 5, 8), (2, 5, 8)), r"Q must be \[B, S, H\*d\]"),
    ],
)
def test_bad_shapes_are_refused(shapes: tuple[tuple[int, ...], ...], message: str) -> None:
    session = make_session(attention_model(num_heads=4, mask=False))
    q, k, v = (np.zeros(s, dtype=np.float32) for s in shapes)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        run(session, {"Q": q, "K": k, "V": v})
    assert "SparseAttention (node 'attention')" in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_bad_mask_is_refused() -> None:
    q = np.zeros((2, 5, 8), dtype=np.float32)
    cases: list[tuple[npt.NDArray[Any], str]] = [
        (np.ones((2, 4), dtype=np.int64), r"key_padding_mask must be \[B, T\] = \[2, 5\]"),
        (np.ones((2, 5), dtype=np.float32), "key_padding_mask must be bool, int32 or int64"),
    ]
    for mask, message in cases:
        model = attention_model(num_heads=2, mask_type=helper.np_dtype_to_tensor_dtype(mask.dtype))
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=message):
            run(make_session(model), {"Q": q, "K": q, "V": q, "key_padding_mask": mask})


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({}, "num_heads is required"),
        ({"num_heads": 2, "pattern": "strided"}, "pattern='strided' is not one of: dense, band"),
        ({"num_heads": 2, "estimator": "exact"}, "estimator='exact' is not one of"),
        ({"num_heads": 2, "pattern": "band"}, "needs window > 0 or density in"),
        ({"num_heads": 2, "pattern": "band", "density": 1.5}, "needs window > 0 or density in"),
        ({"num_heads": 2, "causal": 2}, "causal=2 is not 0 or 1"),
        ({"num_heads": 2, "block_size": 0}, "block_size must be positive"),
        ({"num_heads": 2, "num_global": -1}, "must be >= 0"),
        ({"num_heads": 2, "sample_stride": 0}, "sample_stride must be positive"),
    ],
)
def test_bad_attributes_are_refused(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=r"SparseAttention \(node 'attention'\)") as info:
        make_session(attention_model(**attributes))
    assert message in str(info.value)
