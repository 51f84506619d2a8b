"""Artifacts are data, not code: arrays in `.npz` (never pickled), scalars in JSON."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty.base import ArtifactError


def write(
    directory: Path, stem: str, arrays: Mapping[str, NDArray[Any]], meta: Mapping[str, Any]
) -> None:
    """Write `<stem>.npz` and `<stem>.json` into directory (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / f"{stem}.npz", allow_pickle=False, **dict(arrays))
    (directory / f"{stem}.json").write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")


def read(directory: Path, stem: str) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """Read `<stem>.npz` and `<stem>.json`; raise ArtifactError naming the file on any problem."""
    npz_path = directory / f"{stem}.npz"
    json_path = directory / f"{stem}.json"
    for path in (npz_path, json_path):
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{npz_path}: unreadable ({exc})") from exc
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{json_path}: unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{json_path}: expected a JSON object")
    return arrays, meta


def require(
    arrays: Mapping[str, NDArray[Any]], path: Path, key: str, shape: tuple[int | None, ...]
) -> NDArray[Any]:
    """The array `key`, checked against `shape` (None = any size); ArtifactError names the file."""
    if key not in arrays:
        raise ArtifactError(f"{path}: array {key!r} missing")
    value = arrays[key]
    if value.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(value.shape, shape, strict=True)
    ):
        raise ArtifactError(f"{path}: array {key!r} has shape {value.shape}, expected {shape}")
    return value
