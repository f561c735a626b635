"""`GET /v1/jobs/{id}/events`: a job's status, text and end as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServicesDep
from api.events import Feed
from api.openapi import KEYED, problem_responses
from api.services import Services
from models.db import session_scope
from models.job_events import Position
from models.jobs import get_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
#: one event of the stream, as SSE readers (and schemathesis) parse it
SSE_EVENT = {
    "type": "object",
    "description": "One event: `data` is JSON (`done`: the job object).",
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "delta", "retry", "done"]},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
EVENTS = {
    "description": "`text/event-stream`: `status`, `delta` (stream jobs), `retry` and, last, "
    "`done` (the job as `GET /v1/jobs/{id}` shows it); each with an `id:` to resume from "
    "with `Last-Event-ID`, and keep-alive comments.",
    "content": {"text/event-stream": {"schema": SSE_EVENT}},
}


def _is_stream_job(services: Services, job_id: str, key_id: str) -> bool:
    """Whether the key's job was submitted with `stream` (404 for another key's job)."""
    with session_scope(services.engine) as session:
        return bool(get_job(session, job_id=job_id, key_id=key_id).request.get("stream"))


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: EVENTS, **problem_responses(*KEYED, 404, 422, 429)},
)
async def events(
    job_id: str,
    key: KeyDep,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
) -> EventSourceResponse:
    """The job's events: what the client missed first, then live ones, until `done`."""
    stream = await run_in_threadpool(_is_stream_job, services, job_id, key.id)
    slot = await services.stream_slots.acquire(key.id)
    feed = Feed(
        client=services.events,
        engine=services.engine,
        slots=services.stream_slots,
        slot=slot,
        job_id=job_id,
        key_id=key.id,
        stream=stream,
        position=Position.parse(last_event_id),
        poll_s=services.settings.sse_poll_s,
    )
    return EventSourceResponse(
        feed.events(),
        ping=services.settings.sse_keepalive_s,
        background=BackgroundTask(feed.release),  # also when the stream never started
    )
