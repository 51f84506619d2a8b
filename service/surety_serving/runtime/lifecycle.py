"""The loaded models: lookup, readiness, metadata, and the batchers' life (start, stop, close)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from surety_serving.errors import (
    DrainingError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerNotReadyError,
)
from surety_serving.metrics import Metrics
from surety_serving.runtime.batcher import Batcher, BatchPolicy
from surety_serving.runtime.config import ModelConfig
from surety_serving.runtime.repository import ModelEntry, ModelVersion
from surety_serving.settings import Settings
from surety_serving.tasks import registry
from surety_serving.tasks.base import Stage
from surety_serving.version import __version__

SERVER_NAME = "surety"
#: Advertised in the server metadata, with every registered task endpoint.
PROTOCOL_EXTENSIONS = ("binary_tensor_data",)

VersionKey = tuple[str, int]


class Models:
    """The repository's entries and, per loaded version, its batcher and its tasks' stages."""

    def __init__(
        self, entries: dict[str, ModelEntry], settings: Settings, metrics: Metrics
    ) -> None:
        self.entries = entries
        self.settings = settings
        self.metrics = metrics
        self.batchers: dict[VersionKey, Batcher] = {}
        #: Each version's batched stages (``ServedModel.stages``) and their batchers.
        self.stages: dict[VersionKey, dict[str, tuple[Stage, Batcher]]] = {}
        #: One inference pool per model, each bounded by the cores: a model with slow batches
        #: (long texts) cannot hold every thread while a fast model's requests wait behind it;
        #: the OS shares the cores between the pools.
        self._executors: dict[str, ThreadPoolExecutor] = {}
        #: Set on SIGTERM: readiness answers 503 while requests are still served.
        self.draining = False
        #: Set at the shutdown bound: every request still unanswered, and any new one, gets 503.
        self.closed = False
        for entry in entries.values():
            self._record_readiness(entry)
            executor = ThreadPoolExecutor(
                settings.workers(), thread_name_prefix=f"surety-{entry.name}"
            )
            self._executors[entry.name] = executor
            for version in entry.versions.values():
                self._add_batchers(version, executor)

    def _add_batchers(self, version: ModelVersion, executor: ThreadPoolExecutor) -> None:
        name, served = version.model, version.served
        policy = _policy(version.config, self.settings.batching)
        self.batchers[name, version.version] = Batcher(
            name,
            version.session.run,
            executor,
            slots=self.settings.workers(),
            policy=policy,
            metrics=self.metrics.for_batcher(name),
            pad=served.pad_values,
            pad_left=served.pad_left,
        )
        self.stages[name, version.version] = {
            stage_name: (
                stage,
                Batcher(
                    f"{name}:{stage_name}",
                    stage.run,
                    executor,
                    slots=self.settings.workers(),
                    policy=policy,
                    metrics=stage.metrics,
                ),
            )
            for stage_name, stage in served.stages(name, self.metrics).items()
        }

    def _every_batcher(self) -> list[Batcher]:
        return [*self.batchers.values(), *(b for s in self.stages.values() for _, b in s.values())]

    def _record_readiness(self, entry: ModelEntry) -> None:
        for number in entry.versions:
            self.metrics.model_ready.labels(model=entry.name, version=str(number)).set(1)
        for key in entry.failures:
            version = key if key.isdigit() else ""
            self.metrics.model_ready.labels(model=entry.name, version=version).set(0)

    async def start(self) -> None:
        """Start the batchers (inside the event loop)."""
        for batcher in self._every_batcher():
            batcher.start()

    async def stop(self) -> None:
        """Let running batches finish, then stop the batchers and their pools."""
        for batcher in self._every_batcher():
            await batcher.stop()
        for executor in self._executors.values():
            executor.shutdown(wait=True)

    def close(self) -> None:
        """The shutdown bound: answer everything still queued or running with 503, and refuse
        what comes next."""
        self.closed = True
        error = DrainingError("the server is shutting down; retry on another replica")
        for batcher in self._every_batcher():
            batcher.fail_all(error)

    def check_open(self) -> None:
        """DrainingError once the shutdown bound has passed."""
        if self.closed:
            raise DrainingError("the server is shutting down; retry on another replica")

    # -- server ------------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions served (every task endpoint)."""
        extensions = [*PROTOCOL_EXTENSIONS, *registry.endpoints()]
        return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}

    def check_ready(self) -> None:
        """Raise ServerNotReadyError unless every entry loaded (strict) or one model serves."""
        if self.draining:
            raise ServerNotReadyError("not ready: the server is shutting down")
        if not self.entries:
            raise ServerNotReadyError("not ready: the model repository holds no models")
        broken = [e for e in self.entries.values() if not e.ready]
        serving = any(e.versions for e in self.entries.values())
        if broken and (self.settings.strict_readiness or not serving):
            reasons = "; ".join(f"model '{e.name}': {_reason(e)}" for e in broken)
            raise ServerNotReadyError(f"not ready: {reasons}")

    def is_known(self, model: str) -> bool:
        """Whether the repository holds a folder of this name (bounds metric labels)."""
        return model in self.entries

    # -- models ------------------------------------------------------------------------------

    def entry(self, model: str) -> ModelEntry:
        """The repository entry, or ModelNotFoundError."""
        entry = self.entries.get(model)
        if entry is None:
            raise ModelNotFoundError(f"model '{model}' is not in the repository")
        return entry

    def version(self, model: str, version: int | None = None) -> ModelVersion:
        """The named version, or the highest loaded one; 404 if unknown, 503 if not loaded."""
        entry = self.entry(model)
        if version is None:
            if not entry.versions:
                raise ModelNotReadyError(f"model '{model}' is not ready: {_reason(entry)}")
            return entry.versions[max(entry.versions)]
        if version in entry.versions:
            return entry.versions[version]
        reason = entry.failures.get(str(version))
        if reason is not None:
            raise ModelNotReadyError(f"model '{model}' version {version} is not ready: {reason}")
        raise ModelNotFoundError(f"model '{model}' has no version {version}")

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        """OIP model metadata; the request-level inputs (what clients send)."""
        entry = self.entry(model)
        config = self.version(model, version).config
        versions = [str(v) for v in entry.versions] if version is None else [str(version)]
        return {
            "name": model,
            "versions": versions,
            "platform": config.platform,
            "inputs": [_tensor_metadata(s.name, s.datatype, s.shape) for s in config.inputs],
            "outputs": [_tensor_metadata(s.name, s.datatype, s.shape) for s in config.outputs],
        }


def _policy(config: ModelConfig, batching: bool) -> BatchPolicy:
    spec = config.batching
    return BatchPolicy(
        max_batch_size=spec.max_batch_size,
        max_queue_delay_s=spec.max_queue_delay_ms / 1e3,
        max_queue_size=spec.max_queue_size,
        merge=batching,
        max_length_ratio=spec.max_length_ratio,
    )


def _reason(entry: ModelEntry) -> str:
    return "; ".join(entry.failures.values()) or "no version loaded"


def _tensor_metadata(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}
