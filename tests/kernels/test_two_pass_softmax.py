"""ai.surety::TwoPassSoftmax against kernels.reference, on every ISA path this CPU has."""

from __future__ import annotations

import re
import threading

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from onnx import TensorProto

from surety_serving.kernels import reference
from tests.kernels.conftest import (
    ALGORITHMS,
    RELOAD,
    TWO_PASS,
    SessionFactory,
    assert_matches_reference,
    check_softmax,
    make_session,
    run_softmax,
    softmax_model,
)

pytestmark = pytest.mark.unit

FLT_MAX = float(np.finfo(np.float32).max)
INF = float("inf")
NAN = float("nan")

# Row lengths that reach every tail of the vector loops: 1 .. 2 * 16 + 1 (two AVX-512 vectors
# and one element), one element either side of each main-loop tile (the largest unroll of the
# AVX2 and AVX-512 microkernels is 64 elements), and either side of the 1024-element blocks
# after which the vector kernels fold their float sums into double.
TAIL_LENGTHS = [
    *range(1, 34),
    *(47, 48, 49, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 257),
    *(1023, 1024, 1025, 2047, 2049, 3100),
]


def random_rows(
    rng: np.random.Generator, shape: tuple[int, ...], spread: float = 4.0
) -> npt.NDArray[np.float32]:
    """Scores with a different offset and spread per row, as logits have."""
    offsets = rng.normal(0.0, 30.0, size=(*shape[:-1], 1))
    spreads = rng.uniform(0.1, spread, size=(*shape[:-1], 1))
    return (offsets + spreads * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS.values(), ids=ALGORITHMS.keys())
@pytest.mark.parametrize("length", TAIL_LENGTHS)
def test_tail_lengths(
    softmax_session: SessionFactory, isa: str, algorithm: int, length: int
) -> None:
    rng = np.random.default_rng(length)
    x = random_rows(rng, (3, length))
    y, lse = run_softmax(softmax_session(isa, algorithm=algorithm), x)
    check_softmax(y, lse, x)

    scale = rng.uniform(0.05, 3.0, size=(3, 1)).astype(np.float32)
    mask = rng.random((3, length)) < 0.7
    mask[0] = True
    session = softmax_session(isa, scale=True, mask=True, algorithm=algorithm)
    y, lse = run_softmax(session, x, scale, mask)
    check_softmax(y, lse, x, scale, mask)


@pytest.mark.parametrize(
    "shape", [(7,), (4, 9), (2, 3, 17), (2, 2, 3, 40), (0, 5), (2, 0, 5), (3, 0), (1, 1)]
)
def test_leading_shapes(softmax_session: SessionFactory, isa: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    x = random_rows(rng, shape)
    for algorithm in (None, TWO_PASS, RELOAD):
        y, lse = run_softmax(softmax_session(isa, algorithm=algorithm), x)
        assert y.shape == shape
        assert lse.shape == (*shape[:-1], 1)
        check_softmax(y, lse, x)


@pytest.mark.parametrize("scale_shape", [(), (1,), (2, 3, 1), (1, 3, 1), (2, 1, 1), (3, 1)])
@pytest.mark.parametrize(
    "mask_shape", [(), (1,), (5,), (3, 5), (2, 1, 5), (2, 3, 1), (1, 3, 5), (2, 3, 5)]
)
def test_broadcasting(
    softmax_session: SessionFactory,
    isa: str,
    scale_shape: tuple[int, ...],
    mask_shape: tuple[int, ...],
) -> None:
    rng = np.random.default_rng(abs(hash((scale_shape, mask_shape))) % 2**32)
    x = random_rows(rng, (2, 3, 5))
    scale = np.asarray(rng.uniform(0.1, 2.0, size=scale_shape), dtype=np.float32)
    mask = np.asarray(rng.random(mask_shape) < 0.6)
    for algorithm in (TWO_PASS, RELOAD):
        session = softmax_session(isa, scale=True, mask=True, algorithm=algorithm)
        y, lse = run_softmax(session, x, scale, mask)
        check_softmax(y, lse, x, scale, mask)


def test_mask_without_scale(softmax_session: SessionFactory, isa: str) -> None:
    """Node inputs (X, "", mask): the absent middle input is not mistaken for the mask."""
    rng = np.random.default_rng(5)
    x = random_rows(rng, (4, 21))
    mask = rng.random((4, 21)) < 0.5
    mask[:, 0] = True
    y, lse = run_softmax(softmax_session(isa, mask=True), x, mask=mask)
    check_softmax(y, lse, x, mask=mask)
    assert np.all(y[~mask] == 0.0)


def edge_rows(length: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], list[str]]:
    """One row per hazard, each hidden among ordinary values at seeded random positions."""
    rng = np.random.default_rng(length)
    rows: list[tuple[str, list[float], list[bool] | None]] = [
        ("all -inf", [-INF] * length, None),
        ("-inf among values", [-INF, 0.5, -INF, 2.0], None),
        ("-1e30 sentinels", [-1e30, 1.0, -1e30, -2.0], None),
        ("all -1e30", [-1e30] * length, None),
        ("-FLT_MAX and FLT_MAX", [-FLT_MAX, FLT_MAX, -FLT_MAX, 3.0], None),
        ("all -FLT_MAX", [-FLT_MAX] * length, None),
        ("one +inf", [INF, 1.0, 2.0], None),
        ("two +inf", [INF, -INF, INF, 5.0], None),
        ("NaN kept", [NAN, 1.0, 2.0], None),
        ("NaN excluded", [NAN, 1.0, 2.0], [False, True, True]),
        ("all excluded", [1.0, 2.0, 3.0], [False] * length),
        ("huge positive", [1e30, 2e30, 1.0, -1e30], None),
        ("equal huge positive", [3e38, 3e38, 3e38], None),
        ("two-pass domain edge", [45000.0, 46000.0, -45000.0, 44990.0], None),
        ("all very negative", [-50000.0, -50001.0, -50003.5], None),
        ("wide range", [0.0, -80.0, -100.0, -150.0, -200.0, -1000.0], None),
        ("negative zero", [-0.0, 0.0, -0.0], None),
    ]
    x = np.empty((len(rows), length), dtype=np.float32)
    mask = np.ones((len(rows), length), dtype=bool)
    for i, (_, values, kept) in enumerate(rows):
        x[i] = rng.normal(0.0, 2.0, size=length)
        positions = rng.permutation(length)[: len(values)]
        x[i, positions] = values[: len(positions)]
        if kept is not None:
            mask[i, positions] = kept[: len(positions)]
    return x, mask, [name for name, _, _ in rows]


@pytest.mark.parametrize("algorithm", ALGORITHMS.values(), ids=ALGORITHMS.keys())
@pytest.mark.parametrize("length", [1, 3, 4, 9, 17, 40, 100, 1000])
def test_edge_values(
    softmax_session: SessionFactory, isa: str, algorithm: int, length: int
) -> None:
    x, mask, names = edge_rows(length)
    session = softmax_session(isa, mask=True, algorithm=algorithm)
    y, lse = run_softmax(session, x, mask=mask)
    for i, name in enumerate(names):
        try:
            check_softmax(y[i : i + 1], lse[i : i + 1], x[i : i + 1], mask=mask[i : i + 1])
        except AssertionError as error:
            raise AssertionError(f"row {name!r} (D={length}): {error}") from error
    kept_finite = ~np.isnan(lse[:, 0])
    assert not np.any(np.isnan(y[kept_finite])), "NaN in a row without a kept NaN"


@pytest.mark.parametrize("algorithm", ALGORITHMS.values(), ids=ALGORITHMS.keys())
def test_edge_scales(softmax_session: SessionFactory, isa: str, algorithm: int) -> None:
    """scale 0 (uniform), negative, tiny, and products scale * x that overflow to +-inf."""
    rng = np.random.default_rng(11)
    x = random_rows(rng, (6, 37))
    x[3, 5] = 1e10
    x[4, 7] = -1e10
    x[5, :] = 1e30
    scale = np.array([[0.0], [-1.0], [1e-30], [1e30], [1e30], [1e10]], dtype=np.float32)
    session = softmax_session(isa, scale=True, algorithm=algorithm)
    y, lse = run_softmax(session, x, scale)
    check_softmax(y, lse, x, scale)
    np.testing.assert_allclose(y[0], 1.0 / 37, rtol=1e-6)


@pytest.mark.parametrize("length", [100_000, 1_100_000])
@pytest.mark.slow  # rows of up to a million elements, every ISA
def test_long_rows(softmax_session: SessionFactory, isa: str, length: int) -> None:
    """Long rows; 1.1M elements takes the split-row path (chunk partials) with two-pass."""
    rng = np.random.default_rng(length)
    x = random_rows(rng, (2, length), spread=20.0)
    x[1, rng.integers(0, length, 100)] = -1e30
    mask = rng.random((2, length)) < 0.9
    scale = np.array([[1.0], [0.7]], dtype=np.float32)
    for algorithm in (None, TWO_PASS, RELOAD) if length < 1_000_000 else (None, TWO_PASS):
        y, lse = run_softmax(softmax_session(isa, algorithm=algorithm), x)
        check_softmax(y, lse, x)
    for algorithm in (None, TWO_PASS):
        session = softmax_session(isa, scale=True, mask=True, algorithm=algorithm)
        y, lse = run_softmax(session, x, scale, mask)
        check_softmax(y, lse, x, scale, mask)


def test_long_row_hazards(softmax_session: SessionFactory, isa: str) -> None:
    """Split rows that the two-pass domain hands back to the reload path, chunk by chunk."""
    length = 70_000
    rng = np.random.default_rng(3)
    x = random_rows(rng, (5, length))
    x[0, 66_000] = NAN
    x[1, 40_000] = INF
    x[2, 10] = 1e30
    x[3, :] = -INF
    x[4, 50_000:] = -1e30
    mask = np.ones((5, length), dtype=bool)
    mask[4, :50_000] = False
    y, lse = run_softmax(softmax_session(isa, mask=True, algorithm=TWO_PASS), x, mask=mask)
    check_softmax(y, lse, x, mask=mask)


# The vector paths sum pass 1 in chunks of 2048 elements whose exponent is fixed from the chunk's
# maximum before the chunk is summed (f32_softmax__avx2.cc); the chunk (mantissa, exponent)
# pairs are merged in double.
CHUNK = 2048


@pytest.mark.parametrize(
    "length", [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK - 1, 3 * CHUNK + 1, 6 * CHUNK + 7]
)
def test_chunk_boundaries(softmax_session: SessionFactory, isa: str, length: int) -> None:
    """Chunks whose scales differ by more than float range, in both orders; chunks with nothing
    kept, -inf only or sentinels only between kept ones; maxima on chunk edges."""
    rng = np.random.default_rng(length)
    x = random_rows(rng, (8, length))
    starts = list(range(0, length, CHUNK))
    for c, start in enumerate(starts):
        chunk = slice(start, start + CHUNK)
        x[1, chunk] += 300.0 * c  # each chunk 433 binades above the previous one
        x[2, chunk] -= 300.0 * c  # ... below
        x[3, chunk] += 800.0 * c  # > 1000 binades: earlier partials vanish entirely
        if 0 < c < len(starts) - 1 or (c == 0 and len(starts) > 1):
            x[4, chunk] = -INF if c % 2 else -1e30
            x[5, chunk] = -FLT_MAX
        x[6, start] = 60.0  # the maximum on the first element of every chunk ...
        x[6, min(start + CHUNK, length) - 1] = 60.0  # ... and on the last
    x[7] = np.float32(-45_000.0) + rng.standard_normal(length).astype(np.float32)
    mask = np.ones(x.shape, dtype=bool)
    mask[0, : min(CHUNK, length - 1)] = False  # a whole chunk excluded
    scale = np.array([[0.5], [1.0], [1.0], [1.0], [2.0], [1.0], [1.0], [1.0]], dtype=np.float32)
    y, lse = run_softmax(softmax_session(isa, algorithm=TWO_PASS), x)
    check_softmax(y, lse, x)
    session = softmax_session(isa, scale=True, mask=True, algorithm=TWO_PASS)
    y, lse = run_softmax(session, x, scale, mask)
    check_softmax(y, lse, x, scale, mask)


def _run_bound(
    session: ort.InferenceSession, x: npt.NDArray[np.float32], offset: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Run with Y bound `offset` floats past a 64-byte boundary (IOBinding to a raw pointer)."""
    storage = np.zeros(x.size + 32, dtype=np.float32)
    start = (-storage.ctypes.data // 4) % 16 + offset
    y = storage[start : start + x.size].reshape(x.shape)
    lse = np.zeros((x.shape[0], 1), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    binding.bind_output("Y", "cpu", 0, np.float32, list(x.shape), y.ctypes.data)
    binding.bind_output("log_sum_exp", "cpu", 0, np.float32, list(lse.shape), lse.ctypes.data)
    session.run_with_iobinding(binding)
    return y.copy(), lse


@pytest.mark.slow  # rows past the last-level cache, a few hundred MB
def test_streaming_stores(softmax_session: SessionFactory, isa: str) -> None:
    """Y larger than the last-level cache (32 MiB) is written with streaming stores: split rows
    and whole rows, Y aligned and not (a head of ordinary stores up to the vector boundary),
    lengths with tails."""
    rng = np.random.default_rng(11)
    x = random_rows(rng, (9, 1_000_003))
    ref_y, ref_lse = reference.two_pass_softmax(x)
    session = softmax_session(isa)
    for offset in (0, 1, 7):
        y, lse = _run_bound(session, x, offset)
        assert_matches_reference(y, ref_y, what="Y")
        assert_matches_reference(lse, ref_lse, what="log_sum_exp", absolute_floor=1.0)
    x = random_rows(rng, (520, 16_389))  # two-pass whole rows (not split), 34 MB
    ref_y, ref_lse = reference.two_pass_softmax(x)
    y, lse = _run_bound(softmax_session(isa, algorithm=TWO_PASS), x, 3)
    assert_matches_reference(y, ref_y, what="Y")
    assert_matches_reference(lse, ref_lse, what="log_sum_exp", absolute_floor=1.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(softmax_session: SessionFactory, isa: str, threads: int) -> None:
    rng = np.random.default_rng(threads)
    for shape, algorithm in [
        ((64, 3000), None),
        ((300, 7), None),
        ((1, 1_100_000), None),
        ((1, 1_100_000), TWO_PASS),
        ((3, 70_000), TWO_PASS),
        ((3, 70_000), None),
    ]:
        x = random_rows(rng, shape)
        y, lse = run_softmax(softmax_session(isa, threads=threads, algorithm=algorithm), x)
        check_softmax(y, lse, x)
        y1, lse1 = run_softmax(softmax_session(isa, threads=1, algorithm=algorithm), x)
        # Work is cut into the same tasks whatever the thread count: bitwise identical results.
        np.testing.assert_array_equal(y, y1)
        np.testing.assert_array_equal(lse, lse1)


def test_concurrent_runs_on_one_session(softmax_session: SessionFactory, isa: str) -> None:
    """ORT may call Compute on one kernel object from several threads at once."""
    session = softmax_session(isa, scale=True, mask=True, threads=2)
    rng = np.random.default_rng(8)
    feeds = []
    for i in range(8):
        length = [5, 33, 700, 20_000, 70_000, 9, 64, 1500][i]
        x = random_rows(rng, (4, length))
        scale = rng.uniform(0.5, 2.0, size=(4, 1)).astype(np.float32)
        mask = rng.random((4, length)) < 0.8
        feeds.append((x, scale, mask))
    expected = [run_softmax(session, *feed) for feed in feeds]
    results: list[list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]] = [
        [] for _ in feeds
    ]
    barrier = threading.Barrier(len(feeds))

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            results[i].append(run_softmax(session, *feeds[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (y, lse) in enumerate(expected):
        assert len(results[i]) == 5
        for got_y, got_lse in results[i]:
            np.testing.assert_array_equal(got_y, y)
            np.testing.assert_array_equal(got_lse, lse)
        check_softmax(y, lse, *feeds[i])


def test_optional_log_sum_exp_output(isa: str) -> None:
    session = make_session(softmax_model(lse=False), isa=isa)
    x = random_rows(np.random.default_rng(1), (3, 10))
    (y,) = session.run(None, {"X": x})
    ref_y, _ = reference.two_pass_softmax(x)
    np.testing.assert_allclose(y, ref_y, rtol=reference.RTOL)


def test_rows_sum_to_one(softmax_session: SessionFactory, isa: str) -> None:
    rng = np.random.default_rng(2)
    x = random_rows(rng, (50, 333))
    for algorithm in (TWO_PASS, RELOAD):
        y, _ = run_softmax(softmax_session(isa, algorithm=algorithm), x)
        np.testing.assert_allclose(y.astype(np.float64).sum(axis=-1), 1.0, rtol=1e-5)


# --- bad input: an ORT error naming the op and the problem, never a crash ---------------------


@pytest.mark.parametrize(
    ("model_kwargs", "what"),
    [
        ({"x_type": TensorProto.DOUBLE}, "X"),
        ({"scale": True, "scale_type": TensorProto.DOUBLE}, "scale"),
        ({"mask": True, "mask_type": TensorProto.FLOAT}, "mask"),
    ],
)
def test_wrong_dtype_is_refused(model_kwargs: dict[str, object], what: str) -> None:
    with pytest.raises(Exception, match="TwoPassSoftmax") as info:
        make_session(softmax_model(**model_kwargs))  # type: ignore[arg-type]
    assert what in str(info.value)


@pytest.mark.parametrize(
    ("x_shape", "scale_shape", "mask_shape", "message"),
    [
        ((), None, None, "X must have rank >= 1"),
        ((2, 3), (3,), None, r"scale shape \[3\] is not broadcastable to \[2, 1\]"),
        ((2, 3), (2, 3), None, r"scale shape \[2, 3\] is not broadcastable to \[2, 1\]"),
        ((2, 3), (1, 2, 1), None, r"scale shape \[1, 2, 1\] is not broadcastable to \[2, 1\]"),
        ((2, 3), None, (4,), r"mask shape \[4\] is not broadcastable to X shape \[2, 3\]"),
        ((2, 3), None, (3, 3), r"mask shape \[3, 3\] is not broadcastable to X shape \[2, 3\]"),
        ((2, 3), None, (1, 2, 3), r"mask shape \[1, 2, 3\] is not broadcastable"),
    ],
)
def test_bad_shapes_are_refused(
    softmax_session: SessionFactory,
    x_shape: tuple[int, ...],
    scale_shape: tuple[int, ...] | None,
    mask_shape: tuple[int, ...] | None,
    message: str,
) -> None:
    session = softmax_session(None, scale=scale_shape is not None, mask=mask_shape is not None)
    x = np.zeros(x_shape, dtype=np.float32)
    scale = None if scale_shape is None else np.ones(scale_shape, dtype=np.float32)
    mask = None if mask_shape is None else np.ones(mask_shape, dtype=bool)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        run_softmax(session, x, scale, mask)
    assert "TwoPassSoftmax" in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_bad_algorithm_attribute_is_refused() -> None:
    with pytest.raises(Exception, match=r"TwoPassSoftmax.*algorithm=7"):
        make_session(softmax_model(algorithm=7))
