"""The digits default model: accuracy on the held-out split, the exported graph, and parity of
the ONNX model (ORT + ai.surety kernels) with the torch model within 1e-4."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from surety_serving import kernels
from surety_serving.models import digits
from tests.service.helpers import run_direct

pytestmark = pytest.mark.model


def test_held_out_accuracy(digits_build):
    assert digits_build.test_accuracy >= 0.95
    assert "held-out test accuracy" in (digits_build.entry / "config.yaml").read_text()


def test_softmax_head_is_the_fused_custom_op(repository):
    graph = onnx.load(repository / "digits" / "1" / "model.onnx").graph
    (head,) = [node for node in graph.node if node.domain == kernels.DOMAIN]
    assert head.op_type == "TwoPassSoftmax"
    assert head.output[0] == "probabilities"
    assert not [node for node in graph.node if node.op_type == "Softmax"]
    assert [o.name for o in graph.output] == ["probabilities", "logits", *digits.TAPS]


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_onnx_matches_torch(digits_build, direct, scale):
    # Reference from a fresh instance with the trained weights, under no_grad.
    reference = digits.DigitsCNN()
    reference.load_state_dict(digits_build.model.state_dict())
    reference.eval()
    x = digits_build.data.x_test
    with torch.no_grad():
        expected = reference(torch.from_numpy(x), torch.full((len(x), 1), scale))
    got = run_direct(direct, x, scale=scale)
    for name, tensor in zip(["probabilities", "logits", *digits.TAPS], expected, strict=True):
        np.testing.assert_allclose(got[name], tensor.numpy(), atol=1e-4, rtol=0, err_msg=name)
