"""``POST /v2/models/{model}[/versions/{version}]/<endpoint>`` for every task endpoint.

The routes are built from the task registry when the app is built, so that a registered task's
endpoints are served and documented with no change here. Every task endpoint may answer 409:
the model's task does not serve it (or, for ``/uncertainty``, the version was never calibrated).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from surety_serving.api.inference import handle_inference
from surety_serving.api.responses import INFERENCE_OPENAPI, inference_responses
from surety_serving.deps import DataPlaneDep, ModelName, Version
from surety_serving.protocol.schemas import InferenceResponse
from surety_serving.tasks import registry
from surety_serving.tasks.base import Endpoint

#: The answer of a task endpoint on a model whose task does not serve it.
NOT_SERVED = 409


def router() -> APIRouter:
    """The routes of every endpoint of the registered tasks, in registration order."""
    built = APIRouter(prefix="/v2/models/{model}")
    for endpoint in registry.endpoints().values():
        _add(built, endpoint)
    return built


def _add(router: APIRouter, endpoint: Endpoint) -> None:
    name = endpoint.name
    responses = inference_responses(NOT_SERVED, *endpoint.statuses)
    routes = (
        (f"/{name}", _latest(name), endpoint.description),
        (f"/versions/{{version}}/{name}", _versioned(name), endpoint.version_description),
    )
    for path, handler, description in routes:
        router.add_api_route(
            path,
            handler,
            methods=["POST"],
            name=name,
            description=description,
            response_model=InferenceResponse,
            responses=responses,
            openapi_extra=INFERENCE_OPENAPI,
            tags=list(endpoint.tags),
        )


def _latest(endpoint: str) -> Callable[..., Awaitable[Response]]:
    async def handler(model: ModelName, request: Request, plane: DataPlaneDep) -> Response:
        return await handle_inference(request, plane, plane.dispatch.method(endpoint), model, None)

    handler.__name__ = endpoint
    return handler


def _versioned(endpoint: str) -> Callable[..., Awaitable[Response]]:
    async def handler(
        model: ModelName, version: Version, request: Request, plane: DataPlaneDep
    ) -> Response:
        return await handle_inference(
            request, plane, plane.dispatch.method(endpoint), model, version
        )

    handler.__name__ = f"{endpoint}_version"
    return handler
