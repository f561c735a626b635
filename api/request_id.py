"""A request id on every API request: accepted from `X-Request-ID` or made, logged, returned.

The id is bound in structlog's context (every log line of the request carries it) and the
publisher sends it to the worker as a Celery message header, so one job can be followed from
submit to finish across processes. The access line written here replaces uvicorn's.
"""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
#: an incoming id is kept when it is short and plain; anything else is replaced by a fresh one
SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,127}")
#: probes and scrapes are logged at debug level so they do not drown the job lines
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
#: a job id in a Location header (`/v1/jobs/{id}`) or a route's path parameters
LOCATION_JOB = re.compile(r"^/v1/jobs/([0-9a-f]{32})$")

_current: ContextVar[str | None] = ContextVar("genq_request_id", default=None)
log = structlog.get_logger("genq.api")


def current_request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    return _current.get()


def accept_or_make(incoming: str | None) -> str:
    """Keep a sane incoming id (a proxy's or the client's); otherwise a new random one."""
    if incoming and SANE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """ASGI middleware: assign the id, bind it for logging, echo it, write one access line."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = accept_or_make(Headers(scope=scope).get(HEADER))
        seen: dict[str, object] = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[HEADER] = request_id
                seen["status"] = message["status"]
                seen["location"] = headers.get("location")
            await send(message)

        token = _current.set(request_id)
        start = time.perf_counter()
        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    await self.app(scope, receive, send_with_id)
                finally:
                    _access_line(scope, seen, time.perf_counter() - start)
        finally:
            _current.reset(token)


def _access_line(scope: Scope, seen: dict[str, object], elapsed_s: float) -> None:
    route = getattr(scope.get("route"), "path", "unmatched")
    fields: dict[str, object] = {
        "method": scope["method"],
        "route": route,
        "status": seen["status"],
        "duration_ms": round(elapsed_s * 1000, 1),
    }
    job_id = (scope.get("path_params") or {}).get("job_id")
    match = LOCATION_JOB.match(str(seen.get("location") or ""))
    if job_id or match:
        fields["job_id"] = job_id or match.group(1)
    level = log.debug if route in QUIET_ROUTES else log.info
    level("http.request", **fields)
