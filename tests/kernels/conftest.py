"""Session boilerplate for the kernel tests: ISA paths, graphs, sessions, comparisons."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from surety_serving import kernels
from surety_serving.kernels import reference

ISA_VARIANTS_INC = Path(__file__).resolve().parents[2] / "kernels" / "src" / "isa_variants.inc"


def isa_paths() -> list[str]:
    """The ISA paths of the library, read from the same X-macro list the C++ dispatch expands."""
    text = ISA_VARIANTS_INC.read_text()
    return re.findall(r'^SURETY_ISA\(\w+,\s*"(\w+)"', text, flags=re.MULTILINE)


ISAS = isa_paths()
TWO_PASS = 1
RELOAD = 2
ALGORITHMS = {"two_pass": TWO_PASS, "reload": RELOAD}


def _check_isa(name: str) -> str | None:
    """None when this CPU runs `name`, else the library's reason."""
    previous = os.environ.get(kernels.ISA_ENV)
    os.environ[kernels.ISA_ENV] = name
    try:
        got = kernels.isa()
    except RuntimeError as error:
        return str(error)
    finally:
        if previous is None:
            del os.environ[kernels.ISA_ENV]
        else:
            os.environ[kernels.ISA_ENV] = previous
    assert got == name, f"{kernels.ISA_ENV}={name} selected {got}"
    return None


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> str:
    """Every ISA path of the library; skipped (with the library's reason) where the CPU lacks it."""
    name: str = request.param
    reason = _check_isa(name)
    if reason is not None:
        pytest.skip(f"this CPU cannot run the {name} path: {reason}")
    return name


def _value_info(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None)


def softmax_model(
    *,
    scale: bool = False,
    mask: bool = False,
    lse: bool = True,
    algorithm: int | None = None,
    x_type: int = TensorProto.FLOAT,
    scale_type: int = TensorProto.FLOAT,
    mask_type: int = TensorProto.BOOL,
) -> onnx.ModelProto:
    """A one-node TwoPassSoftmax graph; absent optional inputs get empty names, as exported."""
    inputs = ["X", "scale" if scale else "", "mask" if mask else ""]
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = ["Y", "log_sum_exp"] if lse else ["Y"]
    node = helper.make_node(
        "TwoPassSoftmax", inputs, outputs, domain=kernels.DOMAIN, name="softmax"
    )
    if algorithm is not None:
        node.attribute.append(helper.make_attribute("algorithm", algorithm))
    graph_inputs = [_value_info("X", x_type)]
    if scale:
        graph_inputs.append(_value_info("scale", scale_type))
    if mask:
        graph_inputs.append(_value_info("mask", mask_type))
    graph = helper.make_graph(
        [node],
        "two_pass_softmax",
        graph_inputs,
        [_value_info(name, TensorProto.FLOAT) for name in outputs],
    )
    return _model(graph)


def expected_score_model(
    *, probabilities: bool = True, logits_type: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    outputs = ["expected_score", "probabilities"] if probabilities else ["expected_score"]
    node = helper.make_node(
        "ExpectedScore",
        ["layer_logits", "layer_weights", "score_values"],
        outputs,
        domain=kernels.DOMAIN,
        name="lager_head",
    )
    graph = helper.make_graph(
        [node],
        "expected_score",
        [
            _value_info("layer_logits", logits_type),
            _value_info("layer_weights", TensorProto.FLOAT),
            _value_info("score_values", TensorProto.FLOAT),
        ],
        [_value_info(name, TensorProto.FLOAT) for name in outputs],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(kernels.DOMAIN, kernels.OPSET_VERSION),
        ],
    )


def make_session(
    model: onnx.ModelProto, *, isa: str | None = None, threads: int = 1
) -> ort.InferenceSession:
    """An ORT session with the kernels registered, its kernels created on ISA path `isa`."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    previous = os.environ.get(kernels.ISA_ENV)
    if isa is not None:
        os.environ[kernels.ISA_ENV] = isa
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    finally:
        if previous is None:
            os.environ.pop(kernels.ISA_ENV, None)
        else:
            os.environ[kernels.ISA_ENV] = previous


SessionFactory = Callable[..., ort.InferenceSession]


@pytest.fixture(scope="session")
def session_cache() -> Iterator[dict[tuple[Any, ...], ort.InferenceSession]]:
    cache: dict[tuple[Any, ...], ort.InferenceSession] = {}
    yield cache
    cache.clear()


@pytest.fixture
def softmax_session(
    session_cache: dict[tuple[Any, ...], ort.InferenceSession],
) -> SessionFactory:
    """Cached TwoPassSoftmax sessions: softmax_session(isa, scale=, mask=, algorithm=, threads=)."""

    def get(
        isa: str | None,
        *,
        scale: bool = False,
        mask: bool = False,
        algorithm: int | None = None,
        threads: int = 1,
    ) -> ort.InferenceSession:
        key = ("softmax", isa, scale, mask, algorithm, threads)
        if key not in session_cache:
            model = softmax_model(scale=scale, mask=mask, algorithm=algorithm)
            session_cache[key] = make_session(model, isa=isa, threads=threads)
        return session_cache[key]

    return get


@pytest.fixture
def expected_score_session(
    session_cache: dict[tuple[Any, ...], ort.InferenceSession],
) -> SessionFactory:
    def get(isa: str | None, *, threads: int = 1) -> ort.InferenceSession:
        key = ("expected_score", isa, threads)
        if key not in session_cache:
            session_cache[key] = make_session(expected_score_model(), isa=isa, threads=threads)
        return session_cache[key]

    return get


def run_softmax(
    session: ort.InferenceSession,
    x: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32] | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    feeds: dict[str, npt.NDArray[Any]] = {"X": x}
    if scale is not None:
        feeds["scale"] = scale
    if mask is not None:
        feeds["mask"] = mask
    y, lse = session.run(None, feeds)
    return y, lse


def assert_matches_reference(
    actual: npt.NDArray[np.floating[Any]],
    expected: npt.NDArray[np.floating[Any]],
    *,
    what: str = "output",
    absolute_floor: float = 0.0,
) -> None:
    """The op's tolerance: same NaN/inf positions, exact zeros where the reference is exactly 0,
    relative error <= RTOL where |reference| > TINY (or > absolute_floor, which turns the
    relative tolerance into rtol * max(|ref|, absolute_floor) for quantities such as
    log-sum-exp that cross zero), |error| <= TINY below."""
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=f"{what}: NaN positions")
    inf = np.isinf(expected)
    np.testing.assert_array_equal(actual[inf], expected[inf], err_msg=f"{what}: infinities")
    zero = expected == 0
    np.testing.assert_array_equal(actual[zero], 0.0, err_msg=f"{what}: exact zeros")
    regular = ~(nan | inf | zero)
    ref = expected[regular]
    got = actual[regular]
    assert np.all(np.isfinite(got)), f"{what}: non-finite where the reference is finite"
    bound = np.maximum(np.abs(ref), absolute_floor)
    big = bound > reference.TINY
    err = np.abs(got - ref)
    if np.any(big):
        rel = err[big] / bound[big]
        worst = int(np.argmax(rel))
        assert rel[worst] <= reference.RTOL, (
            f"{what}: relative error {rel[worst]:.3g} > {reference.RTOL} "
            f"(got {got[big][worst]!r}, reference {ref[big][worst]!r})"
        )
    assert np.all(err[~big] <= reference.TINY), f"{what}: tiny values off by more than TINY"


def check_softmax(
    y: npt.NDArray[np.float32],
    lse: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32] | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> None:
    ref_y, ref_lse = reference.two_pass_softmax(x, scale, mask)
    assert y.dtype == np.float32 and lse.dtype == np.float32
    assert_matches_reference(y, ref_y, what="Y")
    assert_matches_reference(lse, ref_lse, what="log_sum_exp", absolute_floor=1.0)
