"""The HTTP transport: one router per resource, listed once here with who may call it."""

from fastapi import APIRouter

from surety_serving.api import health, infer, metrics, models, tasks
from surety_serving.api.security import Access


def routers() -> tuple[tuple[APIRouter, Access], ...]:
    """Every router and its access level; the task endpoints' as the registry holds them now."""
    return (
        (health.probes, Access.OPEN),
        (health.router, Access.KEY),
        (models.router, Access.KEY),
        (infer.router, Access.KEY),
        (tasks.router(), Access.KEY),
        (metrics.router, Access.METRICS),
    )
