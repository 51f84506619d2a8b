"""The ONNX session both peer apps run: Surety's session options, the custom-op library by path.

Imports nothing from Surety (the KServe peer runs in its own virtualenv); both apps find this
module beside them (the KServe app as its script directory, the floor through uvicorn's
``--app-dir``). Configured by environment: ``PEER_MODEL`` and ``PEER_LIBRARY``.
"""

from __future__ import annotations

import os

import onnxruntime as ort


def peer_session() -> ort.InferenceSession:
    """One intra-op thread, sequential, no spinning: as Surety's default session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.register_custom_ops_library(os.environ["PEER_LIBRARY"])
    return ort.InferenceSession(
        os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"]
    )
