"""The built library is found, loads into the installed onnxruntime, and reports its ISA path."""

from pathlib import Path

import onnxruntime as ort

import kernels


def test_library_path_is_an_absolute_existing_file() -> None:
    path = Path(kernels.library_path())
    assert path.is_absolute()
    assert path.is_file()
    assert path.name == kernels.LIBRARY_NAME


def test_library_registers_into_onnxruntime() -> None:
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())


def test_isa_names_a_known_path() -> None:
    assert kernels.isa() in {"scalar", "avx2", "avx512"}
