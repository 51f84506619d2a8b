"""The data plane: model lookup, readiness, metadata, infer, score and uncertainty.

The REST layer (``surety_serving.api``) parses, calls one method here and serialises; a gRPC
front-end would call the same methods.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from surety_serving.errors import (
    DrainingError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotAJudgeError,
    NotCalibratedError,
    QueueFullError,
    ServerNotReadyError,
)
from surety_serving.metrics import Metrics
from surety_serving.runtime.batcher import Batcher, BatchPolicy
from surety_serving.runtime.config import ModelConfig
from surety_serving.runtime.repository import ModelEntry, ModelVersion
from surety_serving.runtime.session import Feeds
from surety_serving.runtime.types import InferRequest, InferResponse, Parameters, Tensor
from surety_serving.settings import Settings
from surety_serving.uncertainty.served import UNCERTAINTY_OUTPUTS, ServedUncertainty
from surety_serving.version import __version__

SERVER_NAME = "surety"
#: Advertised in the server metadata.
EXTENSIONS = ("binary_tensor_data", "score", "uncertainty", "judge")
#: Largest request whose uncertainty is evaluated inline when it is its model's only one.
INLINE_UNCERTAINTY_ROWS = 4
#: Requests carrying more input than this (bytes, or characters of text) are decoded and
#: tokenized in a worker thread: a few hundred microseconds of the event loop at most.
INLINE_DECODE_BYTES = 16 * 1024
#: A model's burst allowance (``BurstAllowance``) refills from empty in this many seconds.
BURST_REFILL_S = 1.0
SCORE_OUTPUTS = ("probabilities", "predicted_index", "predicted_label")
#: A judge's answers; the per-layer scores only when asked for (they are for inspection).
JUDGE_OUTPUTS = ("expected_score", "score_probabilities", "layer_scores")
JUDGE_DEFAULT_OUTPUTS = ("expected_score", "score_probabilities")


class DataPlane:
    """Everything a request needs, behind methods that raise domain errors."""

    def __init__(
        self, entries: dict[str, ModelEntry], settings: Settings, metrics: Metrics
    ) -> None:
        self.entries = entries
        self.settings = settings
        self._metrics = metrics
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._uncertainty_batchers: dict[tuple[str, int], Batcher] = {}
        self._active: dict[str, int] = {}  # requests in flight per model, as the gauge shows
        self._bursts: dict[str, BurstAllowance] = {}
        self._labels: dict[str, np.ndarray] = {}
        #: One inference pool per model, each bounded by the cores: a model with slow batches
        #: (long texts) cannot hold every thread while a fast model's requests wait behind it;
        #: the OS shares the cores between the pools.
        self._executors: dict[str, ThreadPoolExecutor] = {}
        #: Set on SIGTERM: readiness answers 503 while requests are still served.
        self.draining = False
        #: Set at the shutdown bound: every request still unanswered, and any new one, gets 503.
        self._closed = False
        for entry in entries.values():
            self._record_readiness(entry)
            executor = ThreadPoolExecutor(
                settings.workers(), thread_name_prefix=f"surety-{entry.name}"
            )
            self._executors[entry.name] = executor
            for version in entry.versions.values():
                self._batchers[entry.name, version.version] = Batcher(
                    entry.name,
                    version.session.run,
                    executor,
                    slots=settings.workers(),
                    policy=_policy(version.config, settings.batching),
                    metrics=metrics.for_batcher(entry.name),
                    pad=version.pad_values,
                    pad_left=version.judge is not None,
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
        """Let running batches finish, then stop the batchers and their pools."""
        for batcher in (*self._batchers.values(), *self._uncertainty_batchers.values()):
            await batcher.stop()
        for executor in self._executors.values():
            executor.shutdown(wait=True)

    def close(self) -> None:
        """The shutdown bound: answer everything still queued or running with 503, and refuse
        what comes next."""
        self._closed = True
        error = DrainingError("the server is shutting down; retry on another replica")
        for batcher in (*self._batchers.values(), *self._uncertainty_batchers.values()):
            batcher.fail_all(error)

    # -- server ------------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions served."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

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

    # -- admission and deadlines --------------------------------------------------------------

    def timeout_s(self, target: ModelVersion, *asked_s: float | None) -> float:
        """The request's time budget: the shortest it asked for (the client stops waiting at
        the first), or the model's default; capped by the server's ``max_timeout_ms``."""
        given = [value for value in asked_s if value is not None]
        wanted = min(given) if given else target.config.batching.default_timeout_ms / 1e3
        return min(wanted, self.settings.max_timeout_ms / 1e3)

    @contextmanager
    def admitted(
        self, model: str, version: int | None, timeout_s: float | None, arrived: float
    ) -> Iterator[None]:
        """Hold one of the model's in-flight places while the block runs, or refuse the request
        before its body is read: unknown model (404), not ready (503), or no room (see
        ``check_room``)."""
        target = self.version(model, version)
        self.check_room(target, timeout_s, arrived)
        with self._inflight(model):
            yield

    def shed(
        self, model: str, version: int | None, timeout_s: float | None, arrived: float
    ) -> None:
        """Raise what ``admitted`` would for want of room, if anything, at the least cost.

        Only load is judged here: an unknown model or version, or one that is not ready, is
        left to ``admitted``, which the transport calls after authentication."""
        try:
            target = self.version(model, version)
        except (ModelNotFoundError, ModelNotReadyError):
            return
        self.check_room(target, timeout_s, arrived)

    def check_room(self, target: ModelVersion, timeout_s: float | None, arrived: float) -> None:
        """Refuse a request that the model has no room for: shutting down (503), deadline
        already past (504), or no place in flight or in time (429).

        In flight, a model holds at most ``in_flight_limit`` requests: more would not raise its
        throughput, only everyone's latency, since they would wait in the event loop, where
        health checks and other models wait too. In time, its queue must be able to finish
        one more row within the deadline (the body can only shorten ``timeout_s``, so refusing
        on it is safe; the batcher checks again with the real row count)."""
        if self._closed:
            raise DrainingError("the server is shutting down; retry on another replica")
        active = self._active.get(target.model, 0)
        limit = self.in_flight_limit(target)
        if active >= limit and (active >= 2 * limit or not self._burst(target, limit).take()):
            raise QueueFullError(
                f"model '{target.model}' has {active} requests in flight, its limit; retry later"
            )
        remaining = arrived + self.timeout_s(target, timeout_s) - time.monotonic()
        self._batchers[target.model, target.version].admit(1, remaining)

    def _burst(self, target: ModelVersion, limit: int) -> BurstAllowance:
        burst = self._bursts.get(target.model)
        if burst is None:
            burst = self._bursts[target.model] = BurstAllowance(limit)
        return burst

    def in_flight_limit(self, target: ModelVersion) -> int:
        """Requests of a model served at once: half a full batch per execution slot.

        Measured (docs/benchmarks.md, Overload): at twice this, latency and liveness under
        overload grew with no gain in throughput, for the loop-bound digits as for the
        ORT-bound fortune-topics."""
        return max(1, self.settings.workers() * target.config.batching.max_batch_size // 2)

    def deadline(
        self,
        model: str,
        version: int | None,
        request: InferRequest,
        timeout_s: float | None,
        arrived: float,
    ) -> float:
        """When the client stops waiting (``time.monotonic()``): the earlier of request
        parameter ``timeout_ms`` and ``timeout_s`` (the header), else the model's default;
        capped by ``max_timeout_ms``."""
        value = request.parameters.get("timeout_ms")
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InvalidInputError("parameter 'timeout_ms' must be a finite number > 0")
        asked_ms = None if value is None else value / 1e3
        return arrived + self.timeout_s(self.version(model, version), asked_ms, timeout_s)

    # -- inference ---------------------------------------------------------------------------

    async def infer(
        self, model: str, version: int | None, request: InferRequest, deadline: float
    ) -> InferResponse:
        """Run the model and return the requested raw outputs (all, by default)."""
        target = self.version(model, version)
        datatypes = {spec.name: spec.datatype for spec in target.config.outputs}
        selected = _select(model, list(datatypes), request)
        outputs, notes = await self._run(target, request, 1.0, deadline)
        tensors = [Tensor(name, datatypes[name], outputs[name]) for name in selected]
        return InferResponse(model, str(target.version), tensors, request.id, notes)

    async def score(
        self, model: str, version: int | None, request: InferRequest, deadline: float
    ) -> InferResponse:
        """Class probabilities, the argmax and its label; ``temperature`` scales the logits."""
        return await self._classify(model, version, request, deadline, with_uncertainty=False)

    async def uncertainty(
        self, model: str, version: int | None, request: InferRequest, deadline: float
    ) -> InferResponse:
        """The score outputs plus Mahalanobis OOD and SDM reliability, per request row."""
        return await self._classify(model, version, request, deadline, with_uncertainty=True)

    async def judge(
        self, model: str, version: int | None, request: InferRequest, deadline: float
    ) -> InferResponse:
        """An LLM judge's expected score (LAGER over the layers' score-token logits), the
        aggregated score distribution and, when asked for, every layer's expected score."""
        target = self.version(model, version)
        spec = target.config.judge
        if spec is None:
            raise NotAJudgeError(
                f"model '{model}' is a {target.config.task}, not a judge; use /infer or /score"
            )
        selected = _select(model, JUDGE_OUTPUTS, request, JUDGE_DEFAULT_OUTPUTS)
        outputs, notes = await self._run(target, request, 1.0, deadline)
        graph = dict(zip(JUDGE_OUTPUTS, (spec.expected_score, spec.score_probabilities,
                                         spec.layer_scores), strict=True))  # fmt: skip
        scores = outputs[spec.expected_score]
        histogram = self._metrics.judge_score.labels(model=model)
        for score in scores.tolist():
            histogram.observe(score)
        tensors = [Tensor(name, "FP32", outputs[graph[name]]) for name in selected]
        return InferResponse(model, str(target.version), tensors, request.id, notes)

    async def _classify(
        self,
        model: str,
        version: int | None,
        request: InferRequest,
        deadline: float,
        with_uncertainty: bool,
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
        outputs, notes = await self._run(target, request, 1.0 / temperature, deadline)
        probabilities = outputs[classifier.probabilities]
        index = probabilities.argmax(axis=-1).astype(np.int64)
        computed = {
            "probabilities": Tensor("probabilities", "FP32", probabilities),
            "predicted_index": Tensor("predicted_index", "INT64", index),
            "predicted_label": Tensor("predicted_label", "BYTES", self._labels[model][index]),
        }
        if estimators is not None:
            values = await self._evaluate_uncertainty(
                target, estimators, outputs, len(index), deadline
            )
            self._record_uncertainty(model, values)
            for name, datatype in UNCERTAINTY_OUTPUTS.items():
                computed[name] = Tensor(name, datatype, values[name])
        return InferResponse(
            model,
            str(target.version),
            [computed[name] for name in selected],
            request.id,
            {
                "temperature": temperature,
                **({"ood_method": estimators.ood_method} if estimators is not None else {}),
                **notes,
            },
        )

    async def _evaluate_uncertainty(
        self,
        target: ModelVersion,
        estimators: ServedUncertainty,
        outputs: Feeds,
        rows: int,
        deadline: float,
    ) -> Feeds:
        feeds = {name: outputs[name] for name in (*estimators.taps, estimators.logits)}
        if self._active.get(target.model, 0) <= 1 and rows <= INLINE_UNCERTAINTY_ROWS:
            # The only request of this model in flight: evaluated on the event loop (a few
            # hundred µs), since the hop to the executor and back would cost as much. Under
            # load, requests of one ORT batch are evaluated together by the batcher instead.
            return estimators.evaluate(feeds)
        batcher = self._uncertainty_batchers[target.model, target.version]
        return await batcher.submit(feeds, rows, deadline)

    def _record_uncertainty(self, model: str, values: dict[str, np.ndarray]) -> None:
        self._metrics.ood.labels(model=model).inc(int(np.count_nonzero(values["ood"])))
        self._metrics.sdm_reliable.labels(model=model).inc(
            int(np.count_nonzero(values["sdm_reliable"]))
        )
        histogram = self._metrics.mahalanobis_score.labels(model=model)
        for score in values["mahalanobis_score"].tolist():
            histogram.observe(score)

    async def _run(
        self, target: ModelVersion, request: InferRequest, scale: float, deadline: float
    ) -> tuple[Feeds, Parameters]:
        """The model's outputs, and what decoding reports for the response (e.g. truncation)."""
        if self._closed:
            raise DrainingError("the server is shutting down; retry on another replica")
        if _input_size(request) > INLINE_DECODE_BYTES:
            feeds, rows, notes = await asyncio.to_thread(_prepare, target, request, scale)
        else:
            feeds, rows, notes = _prepare(target, request, scale)
        batcher = self._batchers[target.model, target.version]
        alone = self._active.get(target.model, 0) <= 1
        outputs = await batcher.submit(feeds, rows, deadline, alone)
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


class BurstAllowance:
    """Places past a model's in-flight limit for a short burst: a bucket of ``size`` tokens
    that refills in ``BURST_REFILL_S``.

    Random arrivals at a sustainable rate still bunch, and a latency spike (a slow batch of
    another model on the same cores) holds more requests in flight for a moment: those take a
    few tokens and give them back. A standing excess (more clients than the model can serve)
    drains the bucket in a moment and then meets the limit, so the event loop's backlog stays
    bounded; the tokens it gets back, ``size`` a second, are a small share of the requests
    served meanwhile."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tokens = float(size)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Take a token if there is one."""
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.size / BURST_REFILL_S)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


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


def _select(
    model: str,
    available: Sequence[str],
    request: InferRequest,
    default: Sequence[str] | None = None,
) -> list[str]:
    """The requested output names in request order, or the default (every available output)."""
    if request.outputs is None:
        return list(available if default is None else default)
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


def _input_size(request: InferRequest) -> int:
    """Bytes of input: numeric tensors' buffers, BYTES tensors' strings."""
    size = 0
    for tensor in request.inputs:
        data = tensor.data
        size += sum(map(len, data.ravel().tolist())) if data.dtype.kind == "O" else data.nbytes
    return size


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
    decoded_inputs = (
        [target.judge(given)]
        if target.judge is not None
        else [target.decoders[name](given[name]) for name in specs]
    )
    for decoded in decoded_inputs:
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
