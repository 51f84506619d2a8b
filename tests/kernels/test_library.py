"""The built library is found, loads into the installed onnxruntime, and picks its ISA path."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from surety_serving import kernels
from tests.kernels.conftest import ISAS, make_session, softmax_model

pytestmark = pytest.mark.unit


def test_library_path_is_an_absolute_existing_file() -> None:
    path = Path(kernels.library_path())
    assert path.is_absolute()
    assert path.is_file()
    assert path.name == kernels.LIBRARY_NAME


def test_library_registers_into_onnxruntime() -> None:
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())


def test_isa_list_is_read_from_the_variant_list() -> None:
    assert ISAS == ["avx512", "avx2", "scalar"]


def test_isa_names_a_known_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.ISA_ENV, raising=False)
    assert kernels.isa() in ISAS


def test_unset_isa_picks_the_most_capable_supported_path(monkeypatch: pytest.MonkeyPatch) -> None:
    supported = []
    for name in ISAS:
        monkeypatch.setenv(kernels.ISA_ENV, name)
        try:
            kernels.isa()
        except RuntimeError:
            continue
        supported.append(name)
    assert "scalar" in supported
    monkeypatch.setenv(kernels.ISA_ENV, "")
    assert kernels.isa() == supported[0]


def test_scalar_can_always_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ISA_ENV, "scalar")
    assert kernels.isa() == "scalar"


def test_unknown_isa_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ISA_ENV, "sse9")
    with pytest.raises(RuntimeError, match=r"SURETY_KERNELS_ISA=sse9 is not a known"):
        kernels.isa()
    with pytest.raises(Exception, match=r"TwoPassSoftmax.*SURETY_KERNELS_ISA=sse9 is not a known"):
        make_session(softmax_model())


@pytest.mark.parametrize("name", ISAS)
def test_unsupported_isa_fails_kernel_creation(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(kernels.ISA_ENV, name)
    try:
        kernels.isa()
    except RuntimeError as error:
        assert "does not support" in str(error)
        with pytest.raises(Exception, match=r"TwoPassSoftmax.*does not support"):
            make_session(softmax_model())
    else:
        make_session(softmax_model())  # a path the CPU has: sessions are created
