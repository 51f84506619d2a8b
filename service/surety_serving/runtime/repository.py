"""The model repository: scan ``<root>/<model>/{config.yaml,<version>/model.onnx}`` and load it.

A broken entry (bad config.yaml, missing or unloadable model.onnx) is logged with the file and
field and kept as a failure: the other models still load, and readiness reports it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from surety_serving.errors import ConfigError
from surety_serving.judge.inputs import JudgeInputs
from surety_serving.runtime.config import CONFIG_FILE, ModelConfig, load_config
from surety_serving.runtime.decoders import InputDecoder, build_decoders, pad_values
from surety_serving.runtime.session import OnnxSession
from surety_serving.uncertainty.base import ArtifactError
from surety_serving.uncertainty.served import ServedUncertainty

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelVersion:
    """A loaded version: its config and its one ORT session."""

    model: str
    version: int
    config: ModelConfig
    session: OnnxSession
    #: The input decoders (a text model's tokenizer), built with the version: see __post_init__.
    decoders: dict[str, InputDecoder] = field(init=False, repr=False)
    #: A judge's prompt encoder, which reads the fields together (instead of decoders).
    judge: JudgeInputs | None = field(init=False, repr=False)
    #: The fitted OOD detector and SDM, or None when the version was never calibrated.
    uncertainty: ServedUncertainty | None = None

    def __post_init__(self) -> None:
        # Built from the version folder when the version loads, never per request; a missing
        # or broken tokenizer raises ConfigError and fails the version like a bad model.onnx.
        folder = self.session.path.parent
        self.decoders = build_decoders(self.config, folder)
        spec = self.config.judge
        self.judge = None if spec is None else JudgeInputs(spec, folder)

    @property
    def pad_values(self) -> dict[str, int]:
        """The sequence feeds the batcher pads when it merges requests, and their pad values;
        a judge's are padded on the left (its score is read at the last position)."""
        if self.judge is not None:
            return dict(self.judge.pad_values)
        return pad_values(self.decoders)


@dataclass
class ModelEntry:
    """A model folder: the versions that loaded and what went wrong with the rest."""

    name: str
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # "config" or version → reason

    @property
    def ready(self) -> bool:
        """Loaded, and nothing in the folder failed."""
        return bool(self.versions) and not self.failures

    def known_versions(self) -> list[int]:
        """Every integer version folder, loaded or not, ascending."""
        failed = [int(key) for key in self.failures if key.isdigit()]
        return sorted({*self.versions, *failed})


def load_repository(root: Path, intra_op_threads: int) -> dict[str, ModelEntry]:
    """Load every model folder under ``root``; raises ConfigError only if root is missing."""
    if not root.is_dir():
        raise ConfigError(
            f"model repository {root} does not exist; build it with `surety build-defaults`"
        )
    entries = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue  # hidden: e.g. an entry still being written by build-defaults
        if not MODEL_NAME.match(folder.name):
            log.error("model repository: skipping %s: not a valid model name", folder)
            continue
        entries[folder.name] = load_entry(folder, intra_op_threads)
    return entries


def load_entry(folder: Path, intra_op_threads: int) -> ModelEntry:
    """Load one model folder: its config, then every integer version folder."""
    entry = ModelEntry(folder.name)
    try:
        entry.config = load_config(folder / CONFIG_FILE)
    except ConfigError as exc:
        entry.failures["config"] = str(exc)
        log.error("model '%s' not loaded: %s", folder.name, exc)
        return entry
    versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        entry.failures["config"] = f"{folder}: no integer version folder"
        log.error("model '%s' not loaded: %s", folder.name, entry.failures["config"])
    for version in versions:
        try:
            entry.versions[version] = load_version(folder, version, entry.config, intra_op_threads)
        except ConfigError as exc:
            entry.failures[str(version)] = str(exc)
            log.error("model '%s' version %d not loaded: %s", folder.name, version, exc)
    return entry


def load_version(
    folder: Path, version: int, config: ModelConfig, intra_op_threads: int
) -> ModelVersion:
    """Create and warm up the session of one version."""
    start = time.perf_counter()
    session = OnnxSession(folder / str(version) / MODEL_FILE, config, intra_op_threads)
    warm = session.warm_up(config)
    uncertainty = load_uncertainty(folder / str(version), config, session)
    log.info(
        "model '%s' version %d loaded in %.0f ms (warm-up %.1f ms)",
        folder.name, version, (time.perf_counter() - start) * 1e3, warm * 1e3,
    )  # fmt: skip
    return ModelVersion(folder.name, version, config, session, uncertainty)


def load_uncertainty(
    version_dir: Path, config: ModelConfig, session: OnnxSession
) -> ServedUncertainty | None:
    """The version's fitted uncertainty methods; a broken artifact fails the version."""
    spec = config.uncertainty
    if spec.logits is None or not spec.taps:
        return None
    # A per-row output [B] reads as one feature per row.
    widths = {
        output.name: 1 if len(output.shape) == 1 else output.shape[-1]
        for output in session.session.get_outputs()
        if output.shape and (len(output.shape) == 1 or isinstance(output.shape[-1], int))
    }
    try:
        return ServedUncertainty.load(
            version_dir, spec.features, spec.logits, widths, len(config.labels)
        )
    except ArtifactError as exc:
        raise ConfigError(f"uncertainty artifacts: {exc}") from exc
