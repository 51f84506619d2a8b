"""`surety calibrate` on the real digits default: artifacts, report, errors that name the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.cli import main
from service.uncertainty import SDM, Mahalanobis


@pytest.fixture
def uncalibrated(repository: Path, tmp_path: Path) -> Path:
    shutil.copytree(repository / "digits", tmp_path / "digits")
    shutil.rmtree(tmp_path / "digits" / "1" / "uncertainty")
    return tmp_path


def run(root: Path, *extra: str) -> int:
    data = root / "digits" / "data"
    return main(
        [
            "calibrate", "digits", "--model-repository", str(root),
            "--train", str(data / "train.jsonl"), "--calibration", str(data / "calibration.jsonl"),
            *extra,
        ]
    )  # fmt: skip


def test_calibrate_writes_loadable_artifacts_and_a_report(uncalibrated, capsys):
    assert run(uncalibrated, "--alpha", "0.9", "--k", "200") == 0
    directory = uncalibrated / "digits" / "1" / "uncertainty"
    report = json.loads((directory / "report.json").read_text())
    assert report["sdm"]["alpha"] == 0.9 and report["sdm"]["k"] == 200
    assert report["sdm"]["support_size"] == sum(report["train_per_class"])
    assert len(report["sdm"]["psi"]) == 10
    assert 0.0 <= report["softmax_ece"] < 0.2
    assert report["mahalanobis"]["taps"] == [
        "block1_features", "block2_features", "block3_features"
    ]  # fmt: skip
    Mahalanobis.load(directory)
    SDM.load(directory)
    assert "q'_min" in capsys.readouterr().out


def test_ood_validation_switches_the_ensemble_to_logistic(uncalibrated, tmp_path):
    ood = tmp_path / "ood.jsonl"
    ood.write_text(
        "\n".join(
            json.dumps({"image": [float((i * 7 + j) % 17) for j in range(64)]}) for i in range(40)
        )
    )
    assert run(uncalibrated, "--ood-validation", str(ood)) == 0
    report = json.loads((uncalibrated / "digits" / "1" / "uncertainty" / "report.json").read_text())
    assert report["mahalanobis"]["ensemble"] == "logistic"


def test_bad_inputs_are_reported_with_the_file(uncalibrated, tmp_path, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image": [0.0], "label": "3"}\n{oops\n')
    assert run(uncalibrated, "--ood-validation", str(broken)) == 1
    assert "broken.jsonl" in capsys.readouterr().err
    unknown_label = tmp_path / "labels.jsonl"
    unknown_label.write_text(json.dumps({"image": [0.0] * 64, "label": "eleven"}) + "\n")
    data = uncalibrated / "digits" / "data"
    argv = ["calibrate", "digits", "--model-repository", str(uncalibrated), "--train"]
    argv += [str(unknown_label), "--calibration", str(data / "calibration.jsonl")]
    assert main(argv) == 1
    assert "label 'eleven'" in capsys.readouterr().err
    assert main(["calibrate", "nope", "--model-repository", str(uncalibrated),
                 "--train", "a", "--calibration", "b"]) == 2  # fmt: skip
