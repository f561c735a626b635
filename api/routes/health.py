"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import ServicesDep
from models.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process answers; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> dict:
    """Ready when both the database and Redis answer."""
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise NotReady(f"database unavailable ({type(exc).__name__})") from exc
    try:
        client = redis.Redis.from_url(
            services.settings.redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        client.ping()
        client.close()
    except redis.RedisError as exc:
        raise NotReady(f"redis unavailable ({type(exc).__name__})") from exc
    return {"status": "ready", "database": "ok", "redis": "ok"}


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
