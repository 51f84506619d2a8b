"""The KServe peer: ``kserve.ModelServer`` serving a ``kserve.Model`` that runs the digits ONNX.

Runs in its own virtualenv (``build/peers/kserve``), so it imports nothing from Surety: the
custom-op library is the plain .so passed by path. Configured by environment (``PEER_MODEL``,
``PEER_LIBRARY``, ``PEER_MODEL_NAME``, ``PEER_PORT``); one worker, gRPC off.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve import (  # type: ignore[import-not-found,unused-ignore]
    InferOutput,
    InferRequest,
    InferResponse,
    Model,
    ModelServer,
)
from peer_session import peer_session


class Digits(Model):  # type: ignore[misc,unused-ignore]
    """The same session options as Surety's and the floor's, run inline in ``predict``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        """Build the session with the custom-op library registered."""
        self.session = peer_session()
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: Any = None, response_headers: Any = None
    ) -> InferResponse:
        """v2 in, v2 out: the first input is the image, ``scale`` is ones."""
        assert self.session is not None
        image = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        scale = np.ones((image.shape[0], 1), dtype=np.float32)
        results = self.session.run(None, {"image": image, "scale": scale})
        outputs = []
        for name, result in zip(self.outputs, results, strict=True):
            output = InferOutput(name=name, shape=list(result.shape), datatype="FP32")
            output.set_data_from_numpy(result, binary_data=False)
            outputs.append(output)
        return InferResponse(
            model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4())
        )


if __name__ == "__main__":
    model = Digits(os.environ.get("PEER_MODEL_NAME", "digits"))
    server = ModelServer(
        http_port=int(os.environ["PEER_PORT"]),
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    # Quiet like the other servers (they log at warning): KServe's timing middleware stays on,
    # as it is in every KServe deployment, but its per-request INFO lines are not written.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])
