"""ai.surety::ExpectedScore (LAGER's head) against kernels.reference, on every ISA path.

Both forms of ``layer_weights`` are tested throughout: ``[L]`` (one weight per layer) and
``[L, K]`` (one per layer and score token).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from onnx import TensorProto

from surety_serving.kernels import reference
from tests.kernels.conftest import (
    SessionFactory,
    assert_matches_reference,
    expected_score_model,
    make_session,
)

pytestmark = pytest.mark.unit

INF = float("inf")
NAN = float("nan")
WEIGHT_FORMS = ["per_layer", "per_score"]
"""``layer_weights`` of shape ``[L]`` and ``[L, K]``."""

Inputs = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]


def lager_inputs(
    rng: np.random.Generator, batch: int, layers: int, classes: int, form: str = "per_layer"
) -> Inputs:
    """Random logits, signed weights of the given form, score values 1..K."""
    logits = rng.normal(0.0, 3.0, size=(batch, layers, classes)).astype(np.float32)
    shape = (layers,) if form == "per_layer" else (layers, classes)
    weights = rng.uniform(-0.5, 1.0, size=shape).astype(np.float32)
    values = np.arange(1, classes + 1, dtype=np.float32)
    return logits, weights, values


def run(
    session: ort.InferenceSession,
    logits: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32],
    values: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    score, probs = session.run(
        None, {"layer_logits": logits, "layer_weights": weights, "score_values": values}
    )
    return score, probs


def check(
    session: ort.InferenceSession,
    logits: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32],
    values: npt.NDArray[np.float32],
) -> None:
    score, probs = run(session, logits, weights, values)
    ref_score, ref_probs = reference.expected_score(logits, weights, values)
    assert score.dtype == np.float32 and probs.dtype == np.float32
    assert_matches_reference(probs, ref_probs, what="probabilities")
    assert_matches_reference(score, ref_score, what="expected_score")


# K from 1 to 2 x 16 + 1 reaches every tail of every path (16 lanes for AVX-512, 8 for AVX2, 1
# for scalar): one vector, two, and each partial last vector after zero, one and two full ones.
@pytest.mark.parametrize("form", WEIGHT_FORMS)
@pytest.mark.parametrize("classes", [*range(1, 34), 64, 65, 129])
def test_class_counts(
    expected_score_session: SessionFactory, isa: str, classes: int, form: str
) -> None:
    rng = np.random.default_rng(classes)
    check(expected_score_session(isa), *lager_inputs(rng, 4, 3, classes, form))


@pytest.mark.parametrize("form", WEIGHT_FORMS)
@pytest.mark.parametrize(("batch", "layers"), [(0, 4), (1, 1), (5, 0), (7, 12), (300, 33)])
def test_batch_and_layers(
    expected_score_session: SessionFactory, isa: str, batch: int, layers: int, form: str
) -> None:
    rng = np.random.default_rng(batch * 100 + layers)
    check(expected_score_session(isa), *lager_inputs(rng, batch, layers, 5, form))


@pytest.mark.parametrize("form", WEIGHT_FORMS)
@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(
    expected_score_session: SessionFactory, isa: str, threads: int, form: str
) -> None:
    rng = np.random.default_rng(threads)
    inputs = lager_inputs(rng, 2000, 24, 10, form)
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
    score, _ = run(expected_score_session(isa), logits, weights, values)
    assert np.isnan(score[0]) and score[1] == 3.0 and score[5] == 3.0
    np.testing.assert_allclose(score[6], values.mean(), rtol=1e-6)


@pytest.mark.parametrize("classes", [5, 17, 33])
def test_edge_values_per_score(
    expected_score_session: SessionFactory, isa: str, classes: int
) -> None:
    """Signed per-(layer, score) weights meet -inf, sentinels, NaN and huge values; a vector
    body and tail each see them (K = 17 and 33 put index 16 and 32 in a one-lane tail)."""
    rng = np.random.default_rng(classes)
    logits, weights, values = lager_inputs(rng, 9, 3, classes, "per_score")
    last = classes - 1
    weights[0, :] = 1.0
    weights[1, :] = 0.75
    weights[1, last] = -0.25  # a negative weight turns -inf into +inf
    weights[2, :] = np.linspace(0.5, 2.0, classes)
    weights[2, 0] = 0.0
    logits[0, 0, :] = -INF  # nothing left: probabilities 0, expected score NaN
    logits[1, 1, :] = -INF  # -inf everywhere but the last score, +inf there: all its mass
    logits[2, :, :] = -1e30  # sentinels under signed weights: huge finite aggregates
    logits[3, 0, :] = np.linspace(-3e37, 3e37, classes)  # huge, finite
    logits[4, 2, last] = NAN  # NaN row
    logits[5, :, :] = 0.0  # uniform: the mean of the values
    logits[6, 2, 0] = INF  # under a weight of 0: 0 * inf is NaN (IEEE), a NaN row
    logits[7, 2, :] = 1e30  # huge, weighted per score: all mass on the largest weight
    logits[8, :2, :] = -INF  # -inf + inf at the last score: a NaN row
    check(expected_score_session(isa), logits, weights, values)
    score, probs = run(expected_score_session(isa), logits, weights, values)
    assert np.isnan(score[0]) and np.all(probs[0] == 0.0)
    assert score[1] == values[last] and probs[1, last] == 1.0
    assert np.isnan(score[4]) and np.isnan(score[6]) and np.isnan(score[8])
    assert probs[7, last] == 1.0
    np.testing.assert_allclose(score[5], values.mean(), rtol=1e-6)


@pytest.mark.parametrize("classes", [*range(1, 34), 129])
def test_per_score_weights_equal_broadcast_per_layer(
    expected_score_session: SessionFactory, isa: str, classes: int
) -> None:
    """[L, K] weights equal along K give the [L] form's outputs bit for bit, edge values too."""
    rng = np.random.default_rng(1000 + classes)
    logits, weights, values = lager_inputs(rng, 6, 4, classes)
    logits[1, 0, 0] = -INF
    logits[2, :, :] = -1e30
    logits[3, 3, classes // 2] = NAN
    logits[4, 1, -1] = INF
    logits[5, 2, :] = 3e37
    weights[2] = 0.0
    broadcast = np.ascontiguousarray(np.broadcast_to(weights[:, None], (4, classes)))
    session = expected_score_session(isa)
    score, probs = run(session, logits, weights, values)
    score_lk, probs_lk = run(session, logits, broadcast, values)
    np.testing.assert_array_equal(score_lk, score)
    np.testing.assert_array_equal(probs_lk, probs)
    check(session, logits, broadcast, values)


@pytest.mark.parametrize("form", WEIGHT_FORMS)
def test_zero_weights_give_uniform(
    expected_score_session: SessionFactory, isa: str, form: str
) -> None:
    logits, weights, values = lager_inputs(np.random.default_rng(6), 3, 4, 6, form)
    weights = np.zeros_like(weights)
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
        (((2, 3, 5), (3,), (4,)), r"score_values shape \[4\] does not match the K"),
        (((2, 3, 5), (3,), ()), r"score_values must have rank 1, got shape \[\]"),
        *(
            (
                ((2, 3, 5), weights, (5,)),
                rf"layer_weights shape {shown} is neither \[L\] = \[3\] "
                r"nor \[L, K\] = \[3, 5\] for layer_logits shape \[2, 3, 5\]",
            )
            for weights, shown in [
                ((4,), r"\[4\]"),
                ((3, 1), r"\[3, 1\]"),
                ((5, 3), r"\[5, 3\]"),
                ((3, 4), r"\[3, 4\]"),
                ((3, 5, 1), r"\[3, 5, 1\]"),
                ((), r"\[\]"),
            ]
        ),
    ],
)
def test_bad_shapes_are_refused(
    expected_score_session: SessionFactory,
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
    message: str,
) -> None:
    logits, weights, values = (np.ones(shape, dtype=np.float32) for shape in shapes)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=message) as info:
        run(expected_score_session(None), logits, weights, values)
    assert "ExpectedScore" in str(info.value)
    with pytest.raises(ValueError, match="not"):
        reference.expected_score(logits, weights, values)


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(Exception, match="ExpectedScore") as info:
        make_session(expected_score_model(logits_type=TensorProto.DOUBLE))
    assert "layer_logits" in str(info.value)
