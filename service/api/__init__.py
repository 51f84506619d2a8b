"""The HTTP transport: one router per resource, listed once here."""

from fastapi import APIRouter

from service.api import health, infer, metrics, models, score, uncertainty

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    models.router,
    infer.router,
    score.router,
    uncertainty.router,
    metrics.router,
)
