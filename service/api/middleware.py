"""Pure ASGI middleware: ``X-Request-ID`` echo and the per-request RED metrics.

Pure ASGI rather than BaseHTTPMiddleware, which costs a task and a stream per request.
"""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 200
UNKNOWN_MODEL = "_unknown"


class RequestMiddleware:
    """Echo (or assign) X-Request-ID; count and time every request by route and model."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            endpoint, model = self._labels(scope)
            self.metrics.requests.labels(endpoint=endpoint, model=model, code=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint, model=model).observe(
                time.perf_counter() - started
            )

    @staticmethod
    def _labels(scope: Scope) -> tuple[str, str]:
        """Route name and model, bounded: unknown paths and model names collapse to one value."""
        route = scope.get("route")
        endpoint = getattr(route, "name", "unmatched")
        model = scope.get("path_params", {}).get("model", "")
        plane = scope.get("state", {}).get("dataplane")
        if model and (plane is None or not plane.is_known(model)):
            model = UNKNOWN_MODEL
        return endpoint, model


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID and 0 < len(value) <= MAX_REQUEST_ID:
            return bytes(value)
    return uuid.uuid4().hex.encode()
