"""``surety optimize`` end to end on a tiny model, and models with external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surety_serving.cli import main
from surety_serving.optimize.options import OptimizeOptions
from surety_serving.optimize.pipeline import optimize_file, uses_external_data
from tests.service.optimize.graphs import floats, make_model, ops, scalar

pytestmark = pytest.mark.unit

WIDTH = 512  # a bias of 2 KiB: above onnx's 1 KiB threshold for external data


def biased_softmax() -> onnx.ModelProto:
    """Softmax(Mul(x + bias, 0.5)) over [2, WIDTH]."""
    bias = np.random.default_rng(0).standard_normal(WIDTH).astype(np.float32)
    return make_model(
        [
            helper.make_node("Add", ["x", "bias"], ["shifted"], name="shift"),
            helper.make_node("Mul", ["shifted", "c"], ["z"], name="scaling"),
            helper.make_node("Softmax", ["z"], ["y"], name="softmax"),
        ],
        [floats("x", ["batch", WIDTH])],
        [floats("y", ["batch", WIDTH])],
        {"bias": bias, "c": scalar(0.5)},
    )


def test_the_command_writes_the_rewritten_model_and_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "model.onnx", tmp_path / "out" / "model.onnx"
    onnx.save(biased_softmax(), str(source))
    assert main(["optimize", str(source), "-o", str(target)]) == 0
    out = capsys.readouterr().out
    assert "replaced 1 node(s)\n  softmax" in out
    assert "scale 0.5 from Mul 'scaling'" in out
    assert "drift, max |rewritten - original| / max(1, max |original|) per output " in out
    assert "(tolerance 0.0001):\n  y" in out
    assert ops(onnx.load(str(target))) == ["Add", "TwoPassSoftmax"]


def test_the_command_refuses_bad_options_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "model.onnx", tmp_path / "out.onnx"
    onnx.save(biased_softmax(), str(source))
    arguments = ["optimize", str(source), "-o", str(target), "--attention", "sparse"]
    assert main([*arguments, "--pattern", "band"]) == 1
    assert "band needs window > 0 or density in (0, 1]; nothing written" in capsys.readouterr().err
    assert not target.exists()


def test_external_data_is_kept(tmp_path: Path) -> None:
    source, target = tmp_path / "model.onnx", tmp_path / "out.onnx"
    onnx.save(biased_softmax(), str(source), save_as_external_data=True, location="weights")
    assert uses_external_data(source)
    optimize_file(source, target, OptimizeOptions())
    assert uses_external_data(target)
    assert (tmp_path / "out.onnx.data").is_file()
    assert ops(onnx.load(str(target))) == ["Add", "TwoPassSoftmax"]
