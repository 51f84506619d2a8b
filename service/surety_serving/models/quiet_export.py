"""Quiet ``torch.onnx.export``: its internal notices say nothing about the model being built."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

#: The exporter's optimiser passes log every deduplicated initializer at INFO.
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Inside: the exporter's loggers at ERROR and its warnings (deprecations, tracer notes on
    Python values taken from tensors, which the exports' parity checks cover) hidden; the
    loggers' levels are restored after."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
