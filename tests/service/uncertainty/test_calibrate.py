"""`surety calibrate` on the real digits default: artifacts, report, errors that name the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from surety_serving.cli import main
from surety_serving.uncertainty import SDM, ServedOOD

pytestmark = pytest.mark.model


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
    data = uncalibrated / "digits" / "data"
    assert (
        run(uncalibrated, "--alpha", "0.9", "--k", "200", "--test", str(data / "test.jsonl")) == 0
    )
    directory = uncalibrated / "digits" / "1" / "uncertainty"
    report = json.loads((directory / "report.json").read_text())
    assert report["sdm"]["alpha"] == 0.9 and report["sdm"]["k"] == 200
    # Digits' SDM is cross-fitted: every labelled point is support and calibrates once.
    assert report["sdm"]["calibration"] == "cross_fitted"
    labelled = sum(report["train_per_class"]) + sum(report["calibration_per_class"])
    assert report["sdm"]["support_size"] == labelled
    assert sum(report["sdm"]["calibration_per_class"]) == labelled
    assert len(report["sdm"]["psi"]) == 10
    assert 0.0 <= report["softmax_ece"] < 0.2
    # Digits' config forces the tap ensemble as the semantic member; without OOD-validation
    # sets every role joins the set, each with its first candidate.
    members = report["ood"]["members"]
    assert [(m["role"], m["method"]) for m in members] == [
        ("semantic", "tap_ensemble"), ("confidence", "energy"), ("density", "knn")
    ]  # fmt: skip
    assert members[0]["params"]["taps"] == [
        "block1_features", "block2_features", "block3_features"
    ]  # fmt: skip
    # The level holds on the test split (a valid p-value flags about 5% of it).
    assert report["ood"]["level"] == 0.05
    assert 0.0 < report["ood"]["test_flagged_share"] < 0.12
    test = report["sdm"]["test"]
    low, high = test["admitted_share_ci95"]
    assert test["size"] == sum(1 for _ in (data / "test.jsonl").open())
    assert low <= test["admitted_share"] <= high and test["admitted"] > 0
    assert test["admitted_accuracy"] >= 0.9
    assert ServedOOD.load(directory).names == ("tap_ensemble", "energy", "knn")
    SDM.load(directory)
    out = capsys.readouterr().out
    assert "OOD detectors tap_ensemble, energy, knn" in out and "SDM admits" in out


def noise_images(path: Path, rows: int = 40) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"image": [float((i * 7 + j) % 17) for j in range(64)]}) for i in range(rows)
        )
    )
    return path


def test_ood_validation_ranks_every_candidate_and_serves_the_best(uncalibrated, tmp_path):
    config = uncalibrated / "digits" / "config.yaml"
    config.write_text(config.read_text().replace("ood_method: tap_ensemble", ""))
    assert run(uncalibrated, "--ood-validation", str(noise_images(tmp_path / "noise.jsonl"))) == 0
    report = json.loads((uncalibrated / "digits" / "1" / "uncertainty" / "report.json").read_text())
    selection = report["ood"]["selection"]
    assert selection["validation_sets"] == ["noise"]
    records = selection["candidates"]
    assert all(0.0 <= r["mean_auroc"] <= 1.0 for r in records)
    # Each member is the best of its role on the validation set.
    for member in report["ood"]["members"]:
        role = [r for r in records if r["role"] == member["role"]]
        best = max(role, key=lambda r: r["mean_auroc"])
        assert (member["method"], member["params"]) == (best["method"], best["params"])
    assert report["ood"]["members"][0]["role"] == "semantic"
    subsets = selection["role_subsets"]
    chosen = [m["role"] for m in report["ood"]["members"]]
    assert max(s["mean_auroc"] for s in subsets) == next(
        s["mean_auroc"] for s in subsets if s["roles"] == chosen
    )


def test_an_unknown_forced_method_is_reported(uncalibrated, capsys):
    config = uncalibrated / "digits" / "config.yaml"
    config.write_text(config.read_text().replace("ood_method: tap_ensemble", "ood_method: nope"))
    assert run(uncalibrated) == 1
    assert "'nope'" in capsys.readouterr().err


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
