"""The data plane: model lookup, readiness, metadata, infer, score and uncertainty.

The REST layer (``service.api``) parses, calls one method here and serialises; a gRPC
front-end would call the same methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

import numpy as np

from service import __version__
from service.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotCalibratedError,
    ServerNotReadyError,
)
from service.metrics import Metrics
from service.runtime.batcher import Batcher, BatchPolicy
from service.runtime.config import ModelConfig
from service.runtime.decoders import pad_values
from service.runtime.repository import ModelEntry, ModelVersion
from service.runtime.session import Feeds
from service.runtime.types import InferRequest, InferResponse, Parameters, Tensor
from service.settings import Settings
from service.uncertainty.served import UNCERTAINTY_OUTPUTS, ServedUncertainty

SERVER_NAME = "surety"
#: Advertised in the server metadata; judge joins when it exists.
EXTENSIONS = ("binary_tensor_data", "score", "uncertainty")
#: Largest request whose uncertainty is evaluated inline when it is its model's only one.
INLINE_UNCERTAINTY_ROWS = 4
SCORE_OUTPUTS = ("probabilities", "predicted_index", "predicted_label")


class DataPlane:
    """Everything a request needs, behind methods that raise domain errors."""

    def __init__(
        self,
        entries: dict[str, ModelEntry],
        executor: Executor,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.entries = entries
        self._executor = executor
        self.settings = settings
        self._metrics = metrics
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._uncertainty_batchers: dict[tuple[str, int], Batcher] = {}
        self._active: dict[str, int] = {}  # requests in flight per model, as the gauge shows
        self._labels: dict[str, np.ndarray] = {}
        for entry in entries.values():
            self._record_readiness(entry)
            for version in entry.versions.values():
                self._batchers[entry.name, version.version] = Batcher(
                    entry.name,
                    version.session.run,
                    executor,
                    slots=settings.workers(),
                    policy=_policy(version.config, settings.batching),
                    metrics=metrics.for_batcher(entry.name),
                    pad=pad_values(version.decoders),
                )
                if version.uncertainty is not None:
                    # Requests answered by one ORT batch reach here together; evaluating them
                    # as one batch shares the per-call cost of the kNN search and softmaxes.
                    self._uncertainty_batchers[entry.name, version.version] = Batcher(
                        f"{entry.name}:uncertainty",
                        version.uncertainty.evaluate,
                        executor,
                        slots=settings.workers(),
                        policy=_policy(version.config, settings.batching),
                        metrics=metrics.for_uncertainty_batcher(entry.name),
                    )
            if entry.config is not None:
                self._labels[entry.name] = np.array(
                    [label.encode() for label in entry.config.labels], dtype=object
                )

    def _record_readiness(self, entry: ModelEntry) -> None:
        for number in entry.versions:
            self._metrics.model_ready.labels(model=entry.name, version=str(number)).set(1)
        for key in entry.failures:
            version = key if key.isdigit() else ""
            self._metrics.model_ready.labels(model=entry.name, version=version).set(0)

    async def start(self) -> None:
        """Start the batchers (inside the event loop)."""
        for batcher in (*self._batchers.values(), *self._uncertainty_batchers.values()):
            batcher.start()

    async def stop(self) -> None:
        """Let running batches finish, then stop the batchers."""
        for batcher in (*self._batchers.values(), *self._uncertainty_batchers.values()):
            await batcher.stop()

    # -- server ------------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions served."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def check_ready(self) -> None:
        """Raise ServerNotReadyError unless every entry loaded (strict) or one model serves."""
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

    # -- inference ---------------------------------------------------------------------------

    async def infer(self, model: str, version: int | None, request: InferRequest) -> InferResponse:
        """Run the model and return the requested raw outputs (all, by default)."""
        target = self.version(model, version)
        datatypes = {spec.name: spec.datatype for spec in target.config.outputs}
        selected = _select(model, list(datatypes), request)
        with self._inflight(model):
            outputs, notes = await self._run(target, request, scale=1.0)
        tensors = [Tensor(name, datatypes[name], outputs[name]) for name in selected]
        return InferResponse(model, str(target.version), tensors, request.id, notes)

    async def score(self, model: str, version: int | None, request: InferRequest) -> InferResponse:
        """Class probabilities, the argmax and its label; ``temperature`` scales the logits."""
        return await self._classify(model, version, request, with_uncertainty=False)

    async def uncertainty(
        self, model: str, version: int | None, request: InferRequest
    ) -> InferResponse:
        """The score outputs plus Mahalanobis OOD and SDM reliability, per request row."""
        return await self._classify(model, version, request, with_uncertainty=True)

    async def _classify(
        self, model: str, version: int | None, request: InferRequest, with_uncertainty: bool
    ) -> InferResponse:
        target = self.version(model, version)
        classifier = target.config.classifier
        if classifier is None:
            raise InvalidInputError(f"model '{model}' is not a classifier; use /infer")
        temperature = _temperature(request)
        if temperature != 1.0 and classifier.scale_input is None:
            raise InvalidInputError(f"model '{model}' does not take a temperature")
        estimators = target.uncertainty if with_uncertainty else None
        if with_uncertainty and estimators is None:
            raise NotCalibratedError(
                f"model '{model}' version {target.version} has no uncertainty artifacts; run "
                f"`surety calibrate {model} --train FILE --calibration FILE` first"
            )
        available = [*SCORE_OUTPUTS, *(UNCERTAINTY_OUTPUTS if with_uncertainty else ())]
        selected = _select(model, available, request)
        with self._inflight(model):
            outputs, notes = await self._run(target, request, scale=1.0 / temperature)
            probabilities = outputs[classifier.probabilities]
            index = probabilities.argmax(axis=-1).astype(np.int64)
            computed = {
                "probabilities": Tensor("probabilities", "FP32", probabilities),
                "predicted_index": Tensor("predicted_index", "INT64", index),
                "predicted_label": Tensor("predicted_label", "BYTES", self._labels[model][index]),
            }
            if estimators is not None:
                values = await self._evaluate_uncertainty(target, estimators, outputs, len(index))
                self._record_uncertainty(model, values)
                for name, datatype in UNCERTAINTY_OUTPUTS.items():
                    computed[name] = Tensor(name, datatype, values[name])
        return InferResponse(
            model,
            str(target.version),
            [computed[name] for name in selected],
            request.id,
            {"temperature": temperature, **notes},
        )

    async def _evaluate_uncertainty(
        self, target: ModelVersion, estimators: ServedUncertainty, outputs: Feeds, rows: int
    ) -> Feeds:
        feeds = {name: outputs[name] for name in (*estimators.taps, estimators.logits)}
        if self._active[target.model] == 1 and rows <= INLINE_UNCERTAINTY_ROWS:
            # The only request of this model in flight: evaluated on the event loop (a few
            # hundred µs), since the hop to the executor and back would cost as much. Under
            # load, requests of one ORT batch are evaluated together by the batcher instead.
            return estimators.evaluate(feeds)
        return await self._uncertainty_batchers[target.model, target.version].submit(feeds, rows)

    def _record_uncertainty(self, model: str, values: dict[str, np.ndarray]) -> None:
        self._metrics.ood.labels(model=model).inc(int(np.count_nonzero(values["ood"])))
        self._metrics.sdm_reliable.labels(model=model).inc(
            int(np.count_nonzero(values["sdm_reliable"]))
        )
        histogram = self._metrics.mahalanobis_score.labels(model=model)
        for score in values["mahalanobis_score"].tolist():
            histogram.observe(score)

    async def _run(
        self, target: ModelVersion, request: InferRequest, scale: float
    ) -> tuple[Feeds, Parameters]:
        """The model's outputs, and what decoding reports for the response (e.g. truncation)."""
        feeds, rows, notes = _prepare(target, request, scale)
        outputs = await self._batchers[target.model, target.version].submit(feeds, rows)
        return outputs, notes

    @contextmanager
    def _inflight(self, model: str) -> Iterator[None]:
        gauge = self._metrics.inflight.labels(model=model)
        gauge.inc()
        self._active[model] = self._active.get(model, 0) + 1
        try:
            yield
        finally:
            gauge.dec()
            self._active[model] -= 1


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


def _select(model: str, available: Sequence[str], request: InferRequest) -> list[str]:
    """The requested output names in request order, or every available output."""
    if request.outputs is None:
        return list(available)
    names = [output.name for output in request.outputs]
    for name in names:
        if name not in available:
            raise InvalidInputError(
                f"model '{model}' has no output '{name}'; outputs: {', '.join(available)}"
            )
    if len(set(names)) != len(names):
        raise InvalidInputError("an output is requested more than once")
    return names


def _temperature(request: InferRequest) -> float:
    value = request.parameters.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError("parameter 'temperature' must be a number")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError("parameter 'temperature' must be a finite number > 0")
    return float(value)


def _prepare(
    target: ModelVersion, request: InferRequest, scale: float
) -> tuple[Feeds, int, Parameters]:
    """Decode and validate the inputs into the model's feeds; fill the scale input."""
    config = target.config
    specs = {spec.name: spec for spec in config.inputs}
    given = {tensor.name: tensor for tensor in request.inputs}
    for name in given:
        if name not in specs:
            raise InvalidInputError(
                f"model '{target.model}' has no input '{name}'; inputs: {', '.join(specs)}"
            )
    feeds: Feeds = {}
    notes: Parameters = {}
    for name in specs:
        if name not in given:
            raise InvalidInputError(f"model '{target.model}' needs input '{name}'")
        decoded = target.decoders[name](given[name])
        feeds.update(decoded.feeds)
        notes.update(decoded.parameters)
    rows = {array.shape[0] for array in feeds.values()}
    if len(rows) != 1:
        raise InvalidInputError(f"inputs disagree on the batch size: {sorted(rows)}")
    (count,) = rows
    limit = config.batching.max_batch_size
    if count == 0:
        raise InvalidInputError("the batch is empty (first dimension 0)")
    if count > limit:
        raise InvalidInputError(
            f"batch of {count} rows exceeds max_batch_size {limit} of model '{target.model}'"
        )
    if config.classifier is not None and config.classifier.scale_input is not None:
        feeds[config.classifier.scale_input] = np.full((count, 1), scale, dtype=np.float32)
    return feeds, count, notes
