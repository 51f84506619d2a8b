"""Surety: inference serving for ONNX models with the ai.surety kernels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("surety")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
