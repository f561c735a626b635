"""Request counts and latency per route template, for `GET /metrics`."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

REQUESTS = Counter("genq_api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("genq_api_request_seconds", "API request latency", ["method", "route"])


def _route(request: Request) -> str:
    """The route template (`/v1/jobs/{job_id}`), so job ids never become label values."""
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = _route(request)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        LATENCY.labels(request.method, route).observe(time.perf_counter() - start)
        return response
