"""Pure ASGI middleware: ``X-Request-ID`` echo, the per-request RED metrics, early shedding, and
the inference routes' fast path (surety_serving.api.fast).

Pure ASGI rather than BaseHTTPMiddleware, which costs a task and a stream per request.

Shedding: under overload most inference requests are refused, so a refusal must cost a small
fraction of an answer, or refusing eats the capacity it protects. Here, before routing,
dependencies and exception handling, a 429 costs about what a health check does (figures in
docs/benchmarks.md, Overload). Only load is judged this early (`Admission.shed`); everything
else, authentication included, is left to the route, which admits the request for good. A
connection that comes back before its ``Retry-After`` has its refusal held
(surety_serving.api.pacing).
"""

from __future__ import annotations

import asyncio
import os
import re
import time

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from surety_serving.api.errors import handle_error, spec_for
from surety_serving.api.fast import InferenceFastPath
from surety_serving.api.inference import REQUEST_TIMEOUT, header_timeout
from surety_serving.api.pacing import RetryPacer
from surety_serving.errors import (
    DeadlineExceededError,
    DrainingError,
    InvalidInputError,
    QueueFullError,
)
from surety_serving.metrics import Metrics

REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 200
UNKNOWN_MODEL = "_unknown"
LOAD_REFUSALS = (QueueFullError, DeadlineExceededError, DrainingError)


class RequestMiddleware:
    """Echo (or assign) X-Request-ID; count and time every request by route and model; refuse
    inference requests the model has no room for before they are routed, and serve the others
    by the fast path (None: route them too, as tests/service/api/test_fast_path.py compares)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        retry_after_s: int,
        pace_early_retries: bool,
        inference_path: re.Pattern[str],
        fast_path: InferenceFastPath | None,
    ) -> None:
        self.app = app
        self.inference_path = inference_path
        self.fast_path = fast_path
        self.metrics = metrics
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.retry_after_s = retry_after_s
        self.pacer = RetryPacer(retry_after_s) if pace_early_retries else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID, request_id)]
            await send(message)

        path = self._inference_path(scope)
        refusal = self._refusal(scope, path) if path is not None else None
        try:
            if path is not None and refusal is None and self.fast_path is not None:
                await self.fast_path(scope, receive, send_with_id, path)
            elif refusal is None:
                await self.app(scope, receive, send_with_id)
            else:
                if self.pacer is not None and (delay := self.pacer.hold(scope.get("client"))):
                    await asyncio.sleep(delay)
                response = handle_error(Request(scope), refusal, self.retry_after_s)
                await response(scope, receive, send_with_id)
        finally:
            if path is None:
                endpoint, model = self._labels(scope)
            else:
                endpoint, model = path["endpoint"], self._known(scope, path["model"])
            if refusal is not None:
                reason = spec_for(refusal).reject_reason
                self.metrics.rejected.labels(model=model, reason=reason).inc()
            count, duration = self._series(endpoint, model, status)
            count.inc()
            duration.observe(time.perf_counter() - started)

    def _series(self, endpoint: str, model: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and duration histogram of these labels, looked up once: the
        label values are bounded (routes, known models, statuses), and prometheus-client's
        ``labels`` costs a lock and a few allocations per call."""
        key = (endpoint, model, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.metrics.requests.labels(endpoint=endpoint, model=model, code=str(status)),
                self.metrics.request_duration.labels(endpoint=endpoint, model=model),
            )
        return series

    @staticmethod
    def _refusal(scope: Scope, path: re.Match[str]) -> Exception | None:
        """The load refusal for a known model's inference request, if it has no room."""
        plane = scope.get("state", {}).get("dataplane")
        if plane is None:
            return None
        try:
            timeout_s = header_timeout(_header(scope, REQUEST_TIMEOUT.encode()))
        except InvalidInputError:
            return None  # the route answers it, after authentication
        version = path["version"]
        try:
            plane.admission.shed(
                path["model"], int(version) if version else None, timeout_s, time.monotonic()
            )
        except LOAD_REFUSALS as exc:
            return exc
        return None

    def _inference_path(self, scope: Scope) -> re.Match[str] | None:
        if scope["method"] != "POST":
            return None
        return self.inference_path.fullmatch(scope["path"])

    @classmethod
    def _labels(cls, scope: Scope) -> tuple[str, str]:
        """Route name and model, bounded: unknown paths and model names collapse to one value."""
        route = scope.get("route")
        endpoint = getattr(route, "name", "unmatched")
        return endpoint, cls._known(scope, scope.get("path_params", {}).get("model", ""))

    @staticmethod
    def _known(scope: Scope, model: str) -> str:
        """The model's name, or one value for every name the repository does not hold."""
        plane = scope.get("state", {}).get("dataplane")
        if model and (plane is None or not plane.models.is_known(model)):
            return UNKNOWN_MODEL
        return model


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID and 0 < len(value) <= MAX_REQUEST_ID:
            return bytes(value)
    return os.urandom(16).hex().encode()
