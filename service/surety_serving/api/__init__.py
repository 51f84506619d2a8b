"""The HTTP transport: one router per resource, listed once here with who may call it."""

from fastapi import APIRouter

from surety_serving.api import health, infer, judge, metrics, models, score, uncertainty
from surety_serving.api.security import Access

ROUTERS: tuple[tuple[APIRouter, Access], ...] = (
    (health.probes, Access.OPEN),
    (health.router, Access.KEY),
    (models.router, Access.KEY),
    (infer.router, Access.KEY),
    (score.router, Access.KEY),
    (uncertainty.router, Access.KEY),
    (judge.router, Access.KEY),
    (metrics.router, Access.METRICS),
)
