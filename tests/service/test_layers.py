"""The serving layers' imports: the runtime and the HTTP layer know the task protocol, never the
model kinds behind it nor the offline code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SERVICE = Path(__file__).resolve().parents[2] / "service" / "surety_serving"
#: What neither the runtime nor the HTTP layer may import (the tasks import them).
FORBIDDEN = (
    "surety_serving.judge",
    "surety_serving.uncertainty",
    "surety_serving.export",
    "surety_serving.tasks.classifier",
    "surety_serving.tasks.judge",
)


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", ["runtime", "api"])
def test_the_layer_imports_no_model_kind_and_no_offline_code(layer):
    paths = sorted((SERVICE / layer).glob("*.py"))
    assert len(paths) > 3, SERVICE / layer  # the layer is where this test looks
    for path in paths:
        bad = [
            name
            for name in imports(path)
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
        ]
        assert not bad, f"{path.name} imports {bad}"


def test_the_served_uncertainty_does_not_load_the_calibration_cli():
    assert "surety_serving.uncertainty.calibrate" not in imports(
        SERVICE / "uncertainty" / "served.py"
    )
