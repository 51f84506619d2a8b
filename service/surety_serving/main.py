"""The FastAPI application factory; models load in the lifespan, nothing happens at import."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from threadpoolctl import threadpool_limits

from surety_serving.api import routers
from surety_serving.api.errors import ALL_ERRORS
from surety_serving.api.failures import error_response
from surety_serving.api.fast import InferenceFastPath, inference_path
from surety_serving.api.middleware import RequestMiddleware
from surety_serving.api.openapi import SuretyAPI, serve_docs
from surety_serving.api.responses import OrjsonResponse
from surety_serving.api.security import guards, load_keyring
from surety_serving.api.uploads import UploadBudget
from surety_serving.metrics import Metrics
from surety_serving.runtime.dataplane import DataPlane
from surety_serving.runtime.repository import load_repository
from surety_serving.settings import Settings
from surety_serving.version import __version__


class State(TypedDict):
    """Lifespan state, handed to every request as ``request.state``."""

    dataplane: DataPlane
    uploads: UploadBudget


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model repository loads when the app starts (its lifespan)."""
    settings = settings or Settings()
    metrics = Metrics(longest_request_s=settings.max_timeout_ms / 1e3)
    app = SuretyAPI(
        title="Surety",
        version=__version__,
        summary="Open Inference Protocol v2 serving of ONNX models, with the ai.surety kernels",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # FastAPI's pages load Swagger UI and ReDoc from CDNs; serve_docs serves it locally.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    keyring = load_keyring(settings)
    access_guards = guards(settings, keyring)
    for router, access in routers():
        guard = access_guards[access]
        app.include_router(router, dependencies=guard.dependencies, responses=guard.responses)
    serve_docs(app)
    for exc_type in (*ALL_ERRORS, HTTPException, Exception):
        app.add_exception_handler(exc_type, error_response)
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        retry_after_s=settings.retry_after_s,
        pace_early_retries=settings.pace_early_retries,
        inference_path=inference_path(),
        fast_path=InferenceFastPath(keyring),
    )
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """Load and warm every model, run the batchers, and stop them on shutdown."""
    settings: Settings = app.state.settings
    # BLAS calls on the request path (uncertainty's distances) are tiny and run in the bounded
    # executor already; OpenBLAS's own threads would only contend with it for the same cores.
    blas_limits = threadpool_limits(limits=1, user_api="blas")
    entries = await asyncio.to_thread(
        load_repository, settings.model_repository, settings.intra_op_threads
    )
    plane = DataPlane(entries, settings, app.state.metrics)
    await plane.models.start()
    # The server's signal handling drains and closes the data plane (surety_serving.server).
    app.state.dataplane = plane
    # Everything loaded so far lives as long as the process: the cyclic collector need not
    # scan it again on every collection of the requests' garbage.
    gc.freeze()
    try:
        yield {"dataplane": plane, "uploads": UploadBudget(settings.max_buffered_bytes)}
    finally:
        await plane.models.stop()
        blas_limits.restore_original_limits()
