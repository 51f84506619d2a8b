"""Typed dependencies and path parameters: route signatures read like plain parameters.

They are ``async`` on purpose: FastAPI runs sync dependencies in its thread pool, a thread hop
per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from surety_serving.metrics import Metrics
from surety_serving.runtime.dataplane import DataPlane


async def get_dataplane(request: Request) -> DataPlane:
    """The data plane built by the lifespan (lifespan state, not a module global)."""
    plane: DataPlane = request.state.dataplane
    return plane


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

#: Path parameters, documented once; the examples name the default model.
ModelName = Annotated[str, Path(description="a model of the repository", examples=["digits"])]
Version = Annotated[
    int, Path(description="a version of the model (its folder's number)", examples=[1])
]
