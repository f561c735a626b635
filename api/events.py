"""The events of one job as Server-Sent Events: its Redis Stream, then `done` from the database.

Async all the way: an idle stream is a coroutine blocked in `XREAD BLOCK` (a stream job) or
asleep (a plain job), holding no thread; the database is read in the thread pool only on a
silent tick (every GENQ_SSE_POLL_S) and at the end. Entries are replayed from the client's
position first (a late subscriber from the start, a reconnect after its `Last-Event-ID`), so
nothing is missed and nothing repeats. Whatever way the job ended (its worker's `end`, or a
path that writes no event: a cancel while queued, a deadline swept, an answer from the cache),
the database says so on the next tick and the stream closes with `done`.

Open streams are counted per key in Redis (`StreamSlots`), across every API process: each
stream holds a slot that it refreshes while open; the slot of a process that died lapses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import redis
import redis.asyncio as aioredis
import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sse_starlette.event import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from models.attempts import job_detail
from models.db import session_scope, utcnow
from models.errors import EventsUnavailable, TooManyStreams
from models.job_events import (
    DELTA,
    DONE,
    END,
    ORIGIN,
    RETRY,
    STATUS,
    Position,
    decode,
    stream_key,
)
from models.jobs import FINISHED, Job, aware
from models.jsontext import dumps, model_json

log = structlog.get_logger("genq.api")
#: entries read per XREAD
READ_COUNT = 500
#: a stream job that just ended: wait this long for its worker's last entries and `end`
END_GRACE_S = 2.0
#: a slot not refreshed for this long belongs to a dead process; refreshed every third of it
SLOT_LIFETIME_S = 30
_JOBS = Job.__table__.c
_STATE = select(_JOBS.status, _JOBS.finished_at).where(_JOBS.id == bindparam("job_id"))

_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""
_REFRESH = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]) + 1)
return 1
"""


class StreamSlots:
    """At most `limit` open event streams per key, counted in one Redis sorted set per key
    (member: the stream, score: when its slot lapses unless refreshed)."""

    def __init__(self, client: aioredis.Redis, limit: int):
        self.client, self.limit = client, limit
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)

    @staticmethod
    def _key(key_id: str) -> str:
        return f"genq:sse-slots:{key_id}"

    async def acquire(self, key_id: str) -> str:
        """A new slot's id; TooManyStreams past the limit, EventsUnavailable without Redis."""
        slot = uuid.uuid4().hex
        try:
            taken = await self._acquire([self._key(key_id)], [self.limit, SLOT_LIFETIME_S, slot])
        except redis.RedisError as exc:
            log.warning("events.redis_unavailable", error=type(exc).__name__)
            raise EventsUnavailable("the event store (Redis) is unavailable; retry later") from None
        if not taken:
            raise TooManyStreams(
                f"this key has {self.limit} open event streams (GENQ_MAX_STREAMS_PER_KEY)"
            )
        return slot

    async def refresh(self, key_id: str, slot: str) -> None:
        await self._refresh([self._key(key_id)], [SLOT_LIFETIME_S, slot])

    async def release(self, key_id: str, slot: str) -> None:
        await self.client.zrem(self._key(key_id), slot)


@dataclass(frozen=True)
class JobState:
    status: str
    finished_at: datetime | None


def _read_state(engine: Engine, job_id: str) -> JobState:
    with engine.connect() as conn:
        row = conn.execute(_STATE, {"job_id": job_id}).one()
    return JobState(row.status, aware(row.finished_at))


def _read_done(engine: Engine, job_id: str, key_id: str) -> str:
    with session_scope(engine) as session:
        return model_json(job_detail(session, job_id=job_id, key_id=key_id))


def _entries(answer) -> list:
    """The (id, fields) pairs of an XREAD answer on one stream (RESP2 list or RESP3 map)."""
    if not answer:
        return []
    if isinstance(answer, dict):
        return next(iter(answer.values()), [])
    return answer[0][1]


@dataclass(kw_only=True)
class Feed:
    """One client's event stream of one job."""

    client: aioredis.Redis
    engine: Engine
    slots: StreamSlots
    slot: str
    job_id: str
    key_id: str
    #: a stream job (its worker writes entries); a plain job's events come from the database
    stream: bool
    position: Position
    poll_s: float
    seen_status: str | None = None
    #: the worker wrote `end`: the database has the job's end
    end_seen: bool = False
    refreshed: float = field(default_factory=time.monotonic)
    released: bool = False

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """Missed entries, then live ones, until `done`."""
        try:
            block = False
            while True:
                batch = await self._read(block)
                for event in batch:
                    yield event
                if self.end_seen or not batch or not block:  # a silent tick: ask the database
                    self.end_seen = False
                    state = await run_in_threadpool(_read_state, self.engine, self.job_id)
                    if state.status in FINISHED:
                        async for event in self._finish(state):
                            yield event
                        return
                    if event := self._status(state.status):
                        yield event
                await self._keep_slot()
                block = True
        finally:
            with anyio.CancelScope(shield=True):
                await self.release()

    async def _read(self, block: bool) -> list[ServerSentEvent]:
        """The stream's entries after the position (waiting up to a tick for one)."""
        if not self.stream:
            if block:
                await anyio.sleep(self.poll_s)
            return []
        try:
            answer = await self.client.xread(
                {stream_key(self.job_id): self.position.entry},
                count=READ_COUNT,
                block=round(self.poll_s * 1000) if block else None,
            )
        except redis.RedisError as exc:  # go on from the database alone: done still comes
            log.warning("events.redis_lost", job_id=self.job_id, error=type(exc).__name__)
            self.stream = False
            return []
        return [event for entry in _entries(answer) if (event := self._entry(*entry))]

    def _entry(self, entry_id: str, fields: dict) -> ServerSentEvent | None:
        self.position = self.position.after(entry_id)
        event, data = decode(fields)
        if event == END:
            self.end_seen = True
        elif event == STATUS and data.get("status") != self.seen_status:
            self.seen_status = data.get("status")
            return ServerSentEvent(dumps(data), event=STATUS, id=entry_id)
        elif event in (DELTA, RETRY):
            return ServerSentEvent(dumps(data), event=event, id=entry_id)
        return None

    def _status(self, status: str) -> ServerSentEvent | None:
        """A status the database shows and this client was not told yet."""
        if status == self.seen_status:
            return None
        self.seen_status = status
        return self._derived(STATUS, dumps({"status": status}))

    def _derived(self, event: str, data: str) -> ServerSentEvent:
        self.position, event_id = self.position.next_derived()
        return ServerSentEvent(data, event=event, id=event_id)

    async def _finish(self, state: JobState) -> AsyncIterator[ServerSentEvent]:
        """The last entries of a stream job that just ended, then `done`. A job no worker
        wrote anything for (cancelled while queued, say) has none to wait for."""
        grace_until = (state.finished_at or utcnow()).timestamp() + END_GRACE_S
        if self.position.entry == ORIGIN:
            grace_until = 0.0
        while self.stream and not self.end_seen:
            left = grace_until - time.time()
            batch = await self._read(block=left > 0.01)
            for event in batch:
                yield event
            if not batch and left <= 0.01:
                break
        if event := self._status(state.status):
            yield event
        done = await run_in_threadpool(_read_done, self.engine, self.job_id, self.key_id)
        yield self._derived(DONE, done)

    async def _keep_slot(self) -> None:
        if time.monotonic() - self.refreshed < SLOT_LIFETIME_S / 3:
            return
        self.refreshed = time.monotonic()
        try:
            await self.slots.refresh(self.key_id, self.slot)
        except redis.RedisError:
            log.warning("events.slot_refresh_failed", job_id=self.job_id)

    async def release(self) -> None:
        """Give the slot back, once: when the stream ends, and (the response's background
        task) when the client left before the stream started, so `events()` never ran."""
        if self.released:
            return
        self.released = True
        try:
            await self.slots.release(self.key_id, self.slot)
        except redis.RedisError:  # it lapses by itself
            log.warning("events.slot_release_failed", job_id=self.job_id)
