"""The `digits` default model: a small CNN on scikit-learn's bundled 8×8 digits.

Trained with torch (seeded, held-out test split), exported to ONNX with the softmax head on
``ai.surety::TwoPassSoftmax`` and the pooled features after each block as extra outputs, which
are the taps that Mahalanobis uncertainty will use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

from surety_serving import kernels
from surety_serving.models.quiet_export import quiet_exporter
from surety_serving.models.torch_threads import one_torch_thread
from surety_serving.uncertainty.calibrate import CalibrationOptions, calibrate_entry, describe

log = logging.getLogger(__name__)

NAME = "digits"
INPUT = "image"
SCALE_INPUT = "scale"
PROBABILITIES = "probabilities"
LOGITS = "logits"
TAPS = ("block1_features", "block2_features", "block3_features")
CHANNELS = (32, 64, 128)
LABELS = [str(digit) for digit in range(10)]
#: Inside the entry, beside the version folders: the splits the model was trained and
#: calibrated on, so its uncertainty artifacts can be refitted and evaluated.
DATA_DIR = "data"
SEED = 0
TEST_FRACTION = 0.2
CALIBRATION_FRACTION = 0.2
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 3e-3


class DigitsCNN(nn.Module):
    """Three conv blocks over the 8×8 image, global-average-pooled taps, a linear head.

    ``forward`` returns the probabilities, the logits and one pooled feature vector per block.
    ``scale`` multiplies the logits row by row before the softmax (1/temperature); under ONNX
    export the head becomes the fused ``ai.surety::TwoPassSoftmax`` node.
    """

    def __init__(self, channels: tuple[int, ...] = CHANNELS, classes: int = len(LABELS)) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        previous = 1
        for index, width in enumerate(channels):
            layers: list[nn.Module] = [
                nn.Conv2d(previous, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            # The last block keeps its 2×2 map; the global pool below summarises it.
            if index < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(previous, classes)

    def forward(
        self, image: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities, logits and the pooled features of each block."""
        x = image.reshape(-1, 1, 8, 8) / 16.0
        taps = []
        for block in self.blocks:
            x = block(x)
            taps.append(x.mean(dim=(2, 3)))
        logits = self.head(taps[-1])
        probabilities = _softmax_head(logits, scale)
        return probabilities, logits, taps[0], taps[1], taps[2]


def _softmax_head(logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """softmax(scale · logits) along the classes; the fused custom op in exported graphs."""
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            f"{kernels.DOMAIN}::TwoPassSoftmax",
            (logits, scale),
            dtype=logits.dtype,
            shape=logits.shape,
            version=kernels.OPSET_VERSION,
        )
    return torch.softmax(logits * scale, dim=-1)


@dataclass(frozen=True)
class DigitsData:
    """Seeded, stratified train/calibration/test splits of scikit-learn's digits (grey 0..16).

    The CNN trains on train only; calibration is held out for the uncertainty methods, test
    for the reported accuracy.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_calibration: np.ndarray
    y_calibration: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def write_splits(self, directory: Path) -> dict[str, Path]:
        """JSONL files ``{"image": [64 grey levels], "label": "<digit>"}`` per split."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("calibration", self.x_calibration, self.y_calibration),
            ("test", self.x_test, self.y_test),
        ):
            paths[split] = directory / f"{split}.jsonl"
            lines = (
                json.dumps({INPUT: row.tolist(), "label": LABELS[label]})
                for row, label in zip(x, y, strict=True)
            )
            paths[split].write_text("\n".join(lines) + "\n")
        return paths


def load_data() -> DigitsData:
    """Split the bundled digits 60/20/20 into train, calibration and test, stratified, seeded."""
    bunch = load_digits()
    x_rest, x_test, y_rest, y_test = train_test_split(
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int64),
        test_size=TEST_FRACTION,
        random_state=SEED,
        stratify=bunch.target,
    )
    x_train, x_calibration, y_train, y_calibration = train_test_split(
        x_rest,
        y_rest,
        test_size=CALIBRATION_FRACTION / (1.0 - TEST_FRACTION),
        random_state=SEED,
        stratify=y_rest,
    )
    return DigitsData(x_train, y_train, x_calibration, y_calibration, x_test, y_test)


def train(data: DigitsData, epochs: int = EPOCHS, progress: bool = True) -> DigitsCNN:
    """Train the CNN with Adam on the training split; deterministic for a given seed."""
    with one_torch_thread():
        return _train(data, epochs, progress)


def _train(data: DigitsData, epochs: int, progress: bool) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    ones = torch.ones(BATCH_SIZE, 1)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in tqdm(range(epochs), desc="training digits", unit="epoch", disable=not progress):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            _, logits, *_ = model(x[index], ones[: len(index)])
            loss = nn.functional.cross_entropy(logits, y[index])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    model.eval()
    return model


def accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the torch model on (x, y)."""
    with torch.no_grad():
        probabilities, *_ = model(torch.from_numpy(x), torch.ones(len(x), 1))
    return float((probabilities.argmax(dim=1).numpy() == y).mean())


def export_onnx(model: DigitsCNN, path: Path) -> None:
    """Export with the dynamo exporter: a dynamic batch dimension shared by image and scale."""
    batch = torch.export.Dim("batch", min=1)
    with quiet_exporter():
        program = _export(model, batch)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def _export(model: DigitsCNN, batch: Any) -> Any:
    return torch.onnx.export(
        model,
        (torch.zeros(2, 64), torch.ones(2, 1)),
        dynamo=True,
        input_names=[INPUT, SCALE_INPUT],
        output_names=[PROBABILITIES, LOGITS, *TAPS],
        dynamic_shapes={"image": {0: batch}, "scale": {0: batch}},
        optimize=True,
        verbose=False,
    )


def repository_config(test_accuracy: float) -> dict[str, Any]:
    """The config.yaml of the digits entry (see docs/operations.md for every field)."""
    feature_outputs = [
        {"name": tap, "datatype": "FP32", "shape": [-1, width]}
        for tap, width in zip(TAPS, CHANNELS, strict=True)
    ]
    return {
        "task": "classifier",
        "description": "Small CNN on scikit-learn's 8x8 digits; "
        f"held-out test accuracy {test_accuracy:.4f}",
        "inputs": [
            {
                "name": INPUT,
                "datatype": "FP32",
                "shape": [-1, 64],
                "decoder": "tensor",
                "range": [0.0, 16.0],
            }
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(LABELS)]},
            {"name": LOGITS, "datatype": "FP32", "shape": [-1, len(LABELS)]},
            *feature_outputs,
        ],
        "classifier": {"probabilities": PROBABILITIES, "scale_input": SCALE_INPUT},
        "labels": LABELS,
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 2.0, "max_queue_size": 512},
        "uncertainty": {
            "taps": list(TAPS),
            "logits": LOGITS,
            # Digits has no OOD-validation set to choose by; the tap ensemble is what it served
            # before the registry (docs/uncertainty.md).
            "ood_method": "tap_ensemble",
            # Cross-fitted SDM admits more of the test split than a held-out calibration split
            # at the same accuracy (docs/uncertainty.md, bench/uncertainty_eval.py).
            "sdm_calibration": "cross_fitted",
        },
    }


@dataclass(frozen=True)
class DigitsBuild:
    """What `build` produced: the trained model, its test accuracy and the written entry."""

    model: DigitsCNN
    data: DigitsData
    test_accuracy: float
    entry: Path


def build(entry: Path, version: int = 1, progress: bool = True) -> DigitsBuild:
    """Train, export and write ``entry/config.yaml`` and ``entry/<version>/model.onnx``."""
    data = load_data()
    model = train(data, progress=progress)
    test_accuracy = accuracy(model, data.x_test, data.y_test)
    log.info("digits: held-out test accuracy %.4f (%d images)", test_accuracy, len(data.y_test))
    version_dir = entry / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(model, version_dir / "model.onnx")
    config = repository_config(test_accuracy)
    (entry / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    splits = data.write_splits(entry / DATA_DIR)
    report = calibrate_entry(
        entry, version, CalibrationOptions(splits["train"], splits["calibration"])
    )
    log.info("digits: calibrated uncertainty (%s)", describe(report))
    return DigitsBuild(model, data, test_accuracy, entry)
