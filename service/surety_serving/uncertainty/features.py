"""Labelled JSONL datasets run through a model version offline, to fit and evaluate uncertainty.

Each line is a JSON object holding the model's request inputs by name (e.g. ``{"image": [64
grey levels]}`` or ``{"text": "..."}``) and, for labelled splits, ``"label"``: a label name from
the model's config or a class index. Inputs go through the same decoders as requests, so text
is tokenized exactly as the service does it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.data.jsonl import read_objects
from surety_serving.errors import InvalidInputError
from surety_serving.protocol.datatypes import NUMPY_DTYPES
from surety_serving.protocol.types import Tensor
from surety_serving.runtime.config import CONFIG_FILE, load_config
from surety_serving.runtime.decoders import InputDecoder, build_decoders
from surety_serving.runtime.session import Feeds, OnnxSession
from surety_serving.tasks.classifier import ClassifierConfig
from surety_serving.uncertainty.base import FeatureSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineModel:
    """A model version outside the server: its config, request decoders and session."""

    config: ClassifierConfig
    decoders: Mapping[str, InputDecoder]
    run: Callable[[Feeds], Feeds]

    @classmethod
    def load(cls, entry: Path, version: int) -> OfflineModel:
        """`<entry>/config.yaml` and `<entry>/<version>/model.onnx`, on every core (offline)."""
        config = load_config(entry / CONFIG_FILE, ClassifierConfig)
        version_dir = entry / str(version)
        session = OnnxSession(version_dir / "model.onnx", config, os.cpu_count() or 1)
        return cls(config, build_decoders(config, version_dir), session.run)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a dataset file (:func:`surety_serving.data.jsonl.read_objects`:
    ValueError
    names the file and line of a bad one); a file without any is an error too."""
    records = read_objects(path)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def label_indices(
    records: list[dict[str, Any]], config: ClassifierConfig, path: Path
) -> NDArray[np.int64]:
    """Class indices of the records' ``label`` fields (a label name or an index)."""
    index = {label: i for i, label in enumerate(config.labels)}
    out = np.empty(len(records), dtype=np.int64)
    for i, record in enumerate(records):
        label = record.get("label")
        if isinstance(label, str) and label in index:
            out[i] = index[label]
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(index):
            out[i] = label
        else:
            raise ValueError(
                f"{path}: record {i + 1} has label {label!r}, not one of the model's labels"
            )
    return out


def _batches(records: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _feeds(batch: list[dict[str, Any]], model: OfflineModel, path: Path) -> Feeds:
    feeds: Feeds = {}
    config = model.config
    for spec in config.inputs:
        try:
            values = [record[spec.name] for record in batch]
        except KeyError:
            raise ValueError(f"{path}: a record lacks input '{spec.name}'") from None
        if spec.datatype == "BYTES":
            data = np.array([str(v).encode() for v in values], dtype=object)
        else:
            data = np.asarray(values, dtype=NUMPY_DTYPES[spec.datatype])
        try:
            feeds.update(model.decoders[spec.name](Tensor(spec.name, spec.datatype, data)).feeds)
        except InvalidInputError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if config.classifier is not None and config.classifier.scale_input is not None:
        feeds[config.classifier.scale_input] = np.ones((len(batch), 1), dtype=np.float32)
    return feeds


def run_dataset(
    model: OfflineModel, path: Path, batch_size: int = 32
) -> tuple[Feeds, list[dict[str, Any]]]:
    """Every model output over the whole file (in file order), and the records.

    Text records are run shortest first, so a batch is padded to a length close to its own
    rows' rather than to the file's longest text.
    """
    records = read_jsonl(path)
    log.info("running the model on %s (%d records)", path, len(records))
    texts = [spec.name for spec in model.config.inputs if spec.datatype == "BYTES"]
    order = np.arange(len(records))
    if texts:
        order = np.argsort([len(str(r.get(texts[0], ""))) for r in records], kind="stable")
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in _batches([records[i] for i in order], batch_size):
        for name, value in model.run(_feeds(batch, model, path)).items():
            chunks.setdefault(name, []).append(value)
    inverse = np.argsort(order)
    outputs = {name: np.concatenate(values)[inverse] for name, values in chunks.items()}
    return outputs, records


def feature_set(
    model: OfflineModel,
    path: Path,
    labelled: bool = True,
    batch_size: int = 32,
    features: tuple[str, ...] | None = None,
) -> FeatureSet:
    """Features, logits and labels of a split (labels all -1 when ``labelled`` is False).

    ``features`` names the outputs kept as features (default: the configured taps).
    """
    config = model.config
    spec = config.uncertainty
    if spec.logits is None or not spec.taps:
        raise ValueError("config.yaml names no uncertainty taps and logits for this model")
    outputs, records = run_dataset(model, path, batch_size)
    labels = (
        label_indices(records, config, path)
        if labelled
        else np.full(len(records), -1, dtype=np.int64)
    )
    names = features if features is not None else tuple(spec.taps)
    # A per-row output [N] (a token score) is one feature per row: [N, 1].
    taps = {name: outputs[name].reshape(len(records), -1) for name in names}
    text_input = next((i.name for i in config.inputs if i.datatype == "BYTES"), None)
    texts = None if text_input is None else tuple(str(r[text_input]) for r in records)
    return FeatureSet(taps=taps, logits=outputs[spec.logits], labels=labels, texts=texts)
