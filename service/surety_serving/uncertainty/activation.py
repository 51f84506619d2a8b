"""Row-wise softmax(scale · z) on `ai.surety::TwoPassSoftmax`, for the SDM activation."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from surety_serving import kernels
from surety_serving.runtime.session import session_options


class ScaledSoftmax(Protocol):
    """softmax(scale[b] · z[b, :]) for each row b."""

    def __call__(
        self, z: NDArray[np.floating], scale: NDArray[np.floating]
    ) -> NDArray[np.float32]: ...


class KernelScaledSoftmax:
    """A one-node ORT session running TwoPassSoftmax with its per-row `scale` input."""

    def __init__(self, intra_op_threads: int = 1) -> None:
        x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["B", "C"])
        scale = onnx.helper.make_tensor_value_info("scale", onnx.TensorProto.FLOAT, ["B", 1])
        y = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["B", "C"])
        node = onnx.helper.make_node("TwoPassSoftmax", ["X", "scale"], ["Y"], domain=kernels.DOMAIN)
        graph = onnx.helper.make_graph([node], "scaled_softmax", [x, scale], [y])
        model = onnx.helper.make_model(
            graph,
            opset_imports=[
                onnx.helper.make_opsetid("", 17),
                onnx.helper.make_opsetid(kernels.DOMAIN, kernels.OPSET_VERSION),
            ],
        )
        self._session = ort.InferenceSession(
            model.SerializeToString(),
            session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )

    def __call__(self, z: NDArray[np.floating], scale: NDArray[np.floating]) -> NDArray[np.float32]:
        feeds = {
            "X": np.ascontiguousarray(z, dtype=np.float32),
            "scale": np.ascontiguousarray(scale, dtype=np.float32).reshape(-1, 1),
        }
        (probabilities,) = self._session.run(["Y"], feeds)
        return np.asarray(probabilities, dtype=np.float32)
