"""config.yaml validation: errors name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from surety_serving.errors import ConfigError
from surety_serving.models.digits import repository_config
from surety_serving.runtime.config import load_config
from surety_serving.tasks.classifier import ClassifierConfig

pytestmark = pytest.mark.unit


def write(tmp_path: Path, config: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_digits_config_is_valid(tmp_path):
    config = load_config(write(tmp_path, repository_config(0.99)), ClassifierConfig)
    assert config.task == "classifier"
    assert config.uncertainty.taps == ["block1_features", "block2_features", "block3_features"]
    assert config.batching.max_batch_size == 64


def broken(**changes: object) -> Any:
    config = repository_config(0.99)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = config
        for parent in parents:
            target = target[parent]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return config


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (broken(task="regressor"), "task: Input should be 'classifier' or 'judge'"),
        (broken(batching__max_queue_delay_ms=-1), "batching.max_queue_delay_ms"),
        (broken(batching__max_batch_sise=4), "batching.max_batch_sise: Extra inputs"),
        (broken(labels=["a", "b"]), "2 labels for 10 classes"),
        (broken(labels=None), "a classifier needs labels"),
        (broken(classifier=None), "a classifier needs a 'classifier' section"),
        (broken(classifier__probabilities="probs"), "'probs' is not among the outputs"),
        (broken(uncertainty__taps=["block9"]), "uncertainty tap 'block9'"),
        (broken(inputs=[]), "inputs: List should have at least 1 item"),
        (broken(outputs=[{"name": "x", "datatype": "FP32", "shape": [4, 10]}]), "batch dimension"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_invalid_configs_name_the_field(tmp_path, config, fragment):
    path = write(tmp_path, config)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ")
    assert fragment in str(error.value)


def test_unparseable_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("task: [classifier")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)
