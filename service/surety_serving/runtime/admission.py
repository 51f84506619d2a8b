"""Admission and deadlines: which requests a model takes, and by when each must be answered."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from surety_serving.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
)
from surety_serving.metrics import Metrics
from surety_serving.protocol.types import InferRequest
from surety_serving.runtime.lifecycle import Models
from surety_serving.runtime.repository import ModelVersion

#: A model's burst allowance (``BurstAllowance``) refills from empty in this many seconds.
BURST_REFILL_S = 1.0


class Admission:
    """Each model's requests in flight, its burst allowance, and the requests' deadlines."""

    def __init__(self, models: Models, metrics: Metrics) -> None:
        self._models = models
        self._metrics = metrics
        self._active: dict[str, int] = {}  # requests in flight per model, as the gauge shows
        self._bursts: dict[str, BurstAllowance] = {}

    def active(self, model: str) -> int:
        """The model's requests in flight."""
        return self._active.get(model, 0)

    def timeout_s(self, target: ModelVersion, *asked_s: float | None) -> float:
        """The request's time budget: the shortest it asked for (the client stops waiting at
        the first), or the model's default; capped by the server's ``max_timeout_ms``."""
        given = [value for value in asked_s if value is not None]
        wanted = min(given) if given else target.config.batching.default_timeout_ms / 1e3
        return min(wanted, self._models.settings.max_timeout_ms / 1e3)

    @contextmanager
    def admitted(
        self, model: str, version: int | None, timeout_s: float | None, arrived: float
    ) -> Iterator[None]:
        """Hold one of the model's in-flight places while the block runs, or refuse the request
        before its body is read: unknown model (404), not ready (503), or no room (see
        ``check_room``)."""
        target = self._models.version(model, version)
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
            target = self._models.version(model, version)
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
        self._models.check_open()
        active = self.active(target.model)
        limit = self.in_flight_limit(target)
        if active >= limit and (active >= 2 * limit or not self._burst(target, limit).take()):
            raise QueueFullError(
                f"model '{target.model}' has {active} requests in flight, its limit; retry later"
            )
        remaining = arrived + self.timeout_s(target, timeout_s) - time.monotonic()
        self._models.batchers[target.model, target.version].admit(1, remaining)

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
        workers = self._models.settings.workers()
        return max(1, workers * target.config.batching.max_batch_size // 2)

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
        return arrived + self.timeout_s(self._models.version(model, version), asked_ms, timeout_s)

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
