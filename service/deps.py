"""Typed dependencies: route signatures read like plain parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.metrics import Metrics
from service.runtime.dataplane import DataPlane
from service.settings import Settings


def get_dataplane(request: Request) -> DataPlane:
    """The data plane built by the lifespan (lifespan state, not a module global)."""
    plane: DataPlane = request.state.dataplane
    return plane


def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
