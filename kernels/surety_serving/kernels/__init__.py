"""The `ai.surety` ONNX Runtime custom-op library.

Register it into a session with::

    from surety_serving import kernels

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(kernels.library_path())

`kernels.reference` holds float64 numpy implementations with exactly the ops' semantics.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

DOMAIN = "ai.surety"
OPSET_VERSION = 1
LIBRARY_NAME = "libsurety_kernels.so"
ISA_ENV = "SURETY_KERNELS_ISA"

__all__ = ["DOMAIN", "ISA_ENV", "OPSET_VERSION", "isa", "library_path"]


@functools.cache
def library_path() -> str:
    """Absolute path of the built shared library.

    An editable install keeps the Python sources here and the built library in site-packages;
    both directories are on the package's ``__path__``, so look in each.
    """
    for directory in __path__:
        candidate = Path(directory) / LIBRARY_NAME
        if candidate.is_file():
            return str(candidate.resolve())
    searched = ", ".join(__path__)
    raise FileNotFoundError(
        f"{LIBRARY_NAME} not found in {searched}; build it with `make build` "
        "(or `pip install -e .`)"
    )


def isa() -> str:
    """Name of the instruction-set path the kernels use on this CPU: avx512, avx2 or scalar.

    Honours ``SURETY_KERNELS_ISA`` (read when called, as sessions read it when created); raises
    RuntimeError when that variable names an unknown path or one this CPU lacks.
    """
    lib = ctypes.CDLL(library_path())
    fn = lib.SuretyKernelsIsa
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    error = ctypes.c_char_p()
    name = fn(ctypes.byref(error))
    if name is None:
        raise RuntimeError((error.value or b"unknown error").decode())
    return str(name.decode())
