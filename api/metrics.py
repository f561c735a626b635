"""Request counts and latency per route template, for `GET /metrics`.

A plain ASGI middleware: Starlette's BaseHTTPMiddleware runs each request through an extra task
and memory streams, which cost a busy API a noticeable share of its CPU per request.
"""

from __future__ import annotations

import glob
import os
import time

from prometheus_client import Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("genq_api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("genq_api_request_seconds", "API request latency", ["method", "route"])
#: each label set's children, found once: `labels()` checks and joins its values on every call
_CHILDREN: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _children(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    found = _CHILDREN.get((method, route, status))
    if found is None:
        found = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
        _CHILDREN[(method, route, status)] = found
    return found


def _route(scope: Scope) -> str:
    """The route template (`/v1/jobs/{job_id}`), so job ids never become label values."""
    return getattr(scope.get("route"), "path", "unmatched")


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # what an unhandled exception becomes

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            requests, latency = _children(scope["method"], _route(scope), status)
            requests.inc()
            latency.observe(time.perf_counter() - start)


class ProcessFilesCollector(MultiProcessCollector):
    """prometheus_client's multiprocess collector, skipping a metrics file that a process is
    creating this instant: it opens the file, then sizes it, and the stock collector fails the
    whole scrape (struct.error) on the still-empty file. It counts from the next scrape."""

    def collect(self):
        files = glob.glob(os.path.join(self._path, "*.db"))
        return self.merge([f for f in files if os.path.getsize(f) >= 8], accumulate=True)
