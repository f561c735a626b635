"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

import os

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from api.deps import ServicesDep
from api.metrics import ProcessFilesCollector
from api.multiproc import MULTIPROC_ENV
from api.openapi import problem_responses
from api.openapi_schemas import Health, Ready
from models.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None, responses={200: {"model": Health}})
def healthz() -> dict:
    """The process answers; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {"model": Ready},
        **problem_responses(503, notes={503: "The database or Redis does not answer."}),
    },
)
def readyz(services: ServicesDep) -> dict:
    """Ready when the database answers at this genq's schema revision and Redis answers."""
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        schema_problem = services.schema.problem()
    except Exception as exc:
        raise NotReady(f"database unavailable ({type(exc).__name__})") from exc
    if schema_problem:
        raise NotReady(schema_problem)
    try:
        client = redis.Redis.from_url(
            services.settings.redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        client.ping()
        client.close()
    except redis.RedisError as exc:
        raise NotReady(f"redis unavailable ({type(exc).__name__})") from exc
    return {"status": "ready", "database": "ok", "redis": "ok"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics() -> Response:
    """This process's metrics, or all API processes' when `genq api --workers N` runs several."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        ProcessFilesCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
