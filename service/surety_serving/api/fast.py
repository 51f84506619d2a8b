"""The inference routes without the framework's per-request machinery.

``POST /v2/models/{model}[/versions/{version}]/{infer,<task endpoints>}`` are most of the
traffic, and their handlers need none of what FastAPI does per request: the body is read raw,
the path has two parameters the middleware has already matched, and the only dependency is the
key check. Profiled at batch 1 (docs/benchmarks.md, Fast path), routing through the route table,
the exception and body-limit middlewares, the exit stack and dependency solving cost about a
fifth of the event loop's time per request. So the request middleware hands these requests here:
the same key check (``KeyRing.authenticate``), the same handler (``handle_inference``) and the
same exception handler (``error_response``) as the routes, which stay in the app as the
documented contract (``/openapi.json``) and for every other method on these paths.
tests/service/api/test_fast_path.py holds the two ways to the same answers.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from surety_serving.api.failures import error_response
from surety_serving.api.inference import handle_inference
from surety_serving.api.security import KeyRing
from surety_serving.runtime.dataplane import DataPlane
from surety_serving.tasks import registry


def inference_path() -> re.Pattern[str]:
    """The paths of ``infer`` and the registered task endpoints, with and without a version;
    tests/service/api/test_shedding.py checks that this matches the routes' paths and nothing
    else."""
    names = ("infer", *registry.endpoints())
    return re.compile(
        r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[0-9]+))?"
        rf"/(?P<endpoint>{'|'.join(map(re.escape, names))})"
    )


class InferenceFastPath:
    """Serve a matched inference request (``inference_path``) as its route would."""

    def __init__(self, keyring: KeyRing | None) -> None:
        self.keyring = keyring

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, path: re.Match[str]
    ) -> None:
        """Answer one request whose path matched ``inference_path()``."""
        model, version = path["model"], path["version"]
        # Read by the exception handler and the metrics, as a routed request's would be.
        scope["path_params"] = {"model": model, **({"version": version} if version else {})}
        request = Request(scope, receive)
        try:
            if self.keyring is not None:
                await self.keyring.authenticate(request)
            plane: DataPlane = scope["state"]["dataplane"]
            method = plane.dispatch.method(path["endpoint"])
            response = await handle_inference(
                request, plane, method, model, int(version) if version else None
            )
        except Exception as exc:
            response = await error_response(request, exc)
        await response(scope, receive, send)
