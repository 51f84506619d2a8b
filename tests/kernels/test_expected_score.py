"""ai.surety::ExpectedScore (LAGER's head) against kernels.reference, on every ISA path."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from onnx import TensorProto

from kernels import reference
from tests.kernels.conftest import (
    SessionFactory,
    assert_matches_reference,
    expected_score_model,
    make_session,
)

INF = float("inf")
NAN = float("nan")


def lager_inputs(
    rng: np.random.Generator, batch: int, layers: int, classes: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    logits = rng.normal(0.0, 3.0, size=(batch, layers, classes)).astype(np.float32)
    weights = rng.uniform(-0.5, 1.0, size=layers).astype(np.float32)
    values = np.arange(1, classes + 1, dtype=np.float32)
    return logits, weights, values


def check(
    session: ort.InferenceSession,
    logits: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32],
    values: npt.NDArray[np.float32],
) -> None:
    score, probs = session.run(
        None, {"layer_logits": logits, "layer_weights": weights, "score_values": values}
    )
    ref_score, ref_probs = reference.expected_score(logits, weights, values)
    assert score.dtype == np.float32 and probs.dtype == np.float32
    assert_matches_reference(probs, ref_probs, what="probabilities")
    assert_matches_reference(score, ref_score, what="expected_score")


@pytest.mark.parametrize("classes", [*range(1, 34), 64, 65, 129])
def test_class_counts(expected_score_session: SessionFactory, isa: str, classes: int) -> None:
    rng = np.random.default_rng(classes)
    check(expected_score_session(isa), *lager_inputs(rng, 4, 3, classes))


@pytest.mark.parametrize(("batch", "layers"), [(0, 4), (1, 1), (5, 0), (7, 12), (300, 33)])
def test_batch_and_layers(
    expected_score_session: SessionFactory, isa: str, batch: int, layers: int
) -> None:
    rng = np.random.default_rng(batch * 100 + layers)
    check(expected_score_session(isa), *lager_inputs(rng, batch, layers, 5))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(expected_score_session: SessionFactory, isa: str, threads: int) -> None:
    rng = np.random.default_rng(threads)
    inputs = lager_inputs(rng, 2000, 24, 10)
    check(expected_score_session(isa, threads=threads), *inputs)


def test_edge_values(expected_score_session: SessionFactory, isa: str) -> None:
    rng = np.random.default_rng(4)
    logits, weights, values = lager_inputs(rng, 7, 2, 5)
    weights[:] = [1.0, 0.5]
    logits[0, :, :] = -INF  # nothing left: probabilities 0, expected score NaN
    logits[1, 0, 2] = INF  # the limit: all mass on score 3
    logits[2, 1, 4] = NAN  # NaN row
    logits[3, :, :] = -1e30  # sentinels: still a uniform distribution
    logits[4, 0, :] = [1e30, 2e30, 0.0, 0.0, -1e30]  # huge, finite
    logits[5, 0, 1] = INF
    logits[5, 0, 3] = INF  # two +inf: mass split between scores 2 and 4
    logits[6, :, :] = 0.0  # uniform: the mean of the values
    check(expected_score_session(isa), logits, weights, values)
    score, _ = expected_score_session(isa).run(
        None, {"layer_logits": logits, "layer_weights": weights, "score_values": values}
    )
    assert np.isnan(score[0]) and score[1] == 3.0 and score[5] == 3.0
    np.testing.assert_allclose(score[6], values.mean(), rtol=1e-6)


def test_zero_weights_give_uniform(expected_score_session: SessionFactory, isa: str) -> None:
    logits, _, values = lager_inputs(np.random.default_rng(6), 3, 4, 6)
    weights = np.zeros(4, dtype=np.float32)
    check(expected_score_session(isa), logits, weights, values)


def test_probabilities_output_is_optional(isa: str) -> None:
    session = make_session(expected_score_model(probabilities=False), isa=isa)
    logits, weights, values = lager_inputs(np.random.default_rng(9), 6, 3, 5)
    (score,) = session.run(
        None, {"layer_logits": logits, "layer_weights": weights, "score_values": values}
    )
    ref_score, _ = reference.expected_score(logits, weights, values)
    assert_matches_reference(score, ref_score, what="expected_score")


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 3), (3,), (3,)), r"layer_logits must have rank 3, got shape \[2, 3\]"),
        (((2, 3, 5), (4,), (5,)), r"layer_weights shape \[4\] does not match the L"),
        (((2, 3, 5), (3,), (4,)), r"score_values shape \[4\] does not match the K"),
        (((2, 3, 5), (3, 1), (5,)), r"layer_weights must have rank 1, got shape \[3, 1\]"),
        (((2, 3, 5), (3,), ()), r"score_values must have rank 1, got shape \[\]"),
    ],
)
def test_bad_shapes_are_refused(
    expected_score_session: SessionFactory,
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    message: str,
) -> None:
    logits, weights, values = (np.ones(shape, dtype=np.float32) for shape in shapes)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=message) as info:
        expected_score_session(None).run(
            None, {"layer_logits": logits, "layer_weights": weights, "score_values": values}
        )
    assert "ExpectedScore" in str(info.value)


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(Exception, match="ExpectedScore") as info:
        make_session(expected_score_model(logits_type=TensorProto.DOUBLE))
    assert "layer_logits" in str(info.value)
