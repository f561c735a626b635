"""Stream jobs (`"stream": true`): the provider's streaming call, its text published as it comes.

Only stream jobs come here (the Runner asks `request.stream`): a plain job does no per-token
work and writes no event. Per attempt the worker writes `status running` (and `retry` from the
second attempt on, or at a first attempt whose stream already holds a dead run's text), then
the text in `delta` entries, batched: a batch goes to Redis when GENQ_STREAM_FLUSH_MS passed
since the last one or it holds 1024 characters, so a stream costs at most ~20 Redis round
trips a second. Once the job's end is committed it writes `end`.

A job whose `policy.moderation` is `block` lets no unchecked text out: its deltas are held and
published, as one delta, only once the job succeeded (its output passed the check); a blocked
or failed job publishes none. While streaming, the job's row is read every half second for a cancel
request: a cancelled stream stops at once and the job ends `cancelled`.

Redis trouble never fails a job: the events are lost (the API still ends every event stream
with `done`, read from the database) and generation goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from models.job_events import DELTA, END, EVENT_FIELD, RETRY, STATUS, encode, stream_key
from models.jobs import RUNNING, Job
from models.pricing import Usage
from models.schemas import JobCreate, TextParams
from models.settings import Settings
from models.text_rules import storable
from worker.output import checked
from worker.providers.base import Provider, StreamStopped, TextResult
from worker.recording import Call, ClaimLost

log = structlog.get_logger("genq.worker")
#: a batch of deltas is sent once it holds this many characters, whatever the time
FLUSH_CHARS = 1024
#: how often a streaming attempt reads its job's row for a cancel request
CANCEL_CHECK_S = 0.5
#: outcomes of a run after which the job is over (the others hand it on: no `end`)
ENDED = ("succeeded", "failed", "cancelled")
_JOBS = Job.__table__.c
_CANCEL_STATE = select(_JOBS.cancel_requested, _JOBS.claim_token, _JOBS.status).where(
    _JOBS.id == bindparam("job_id")
)


@dataclass(kw_only=True)
class EventLog:
    """Appends entries to jobs' Redis Streams: capped, and expiring after the last entry."""

    client: redis.Redis | None
    max_events: int = 20_000
    ttl_s: int = 3600

    def add(self, job_id: str, *entries: tuple[str, dict]) -> None:
        """One round trip for all `entries`; a Redis failure is logged, never raised."""
        if self.client is None or not entries:
            return
        key = stream_key(job_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            for event, data in entries:
                pipe.xadd(key, encode(event, data), maxlen=self.max_events, approximate=True)
            pipe.expire(key, self.ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("stream.publish_failed", job_id=job_id, error=type(exc).__name__)

    def add_after_text(self, job_id: str, *entries: tuple[str, dict]) -> bool:
        """`add`, in the same round trip reading the stream's last entry first: True when it
        was a delta (an earlier run's text is there). A Redis failure reads as False."""
        if self.client is None:
            return False
        key = stream_key(job_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xrevrange(key, count=1)
            for event, data in entries:
                pipe.xadd(key, encode(event, data), maxlen=self.max_events, approximate=True)
            pipe.expire(key, self.ttl_s)
            last = pipe.execute()[0]
        except redis.RedisError as exc:
            log.warning("stream.publish_failed", job_id=job_id, error=type(exc).__name__)
            return False
        fields = last[0][1] if last else {}
        return (fields.get(EVENT_FIELD) or fields.get(EVENT_FIELD.encode())) in (
            DELTA,
            DELTA.encode(),
        )


@dataclass
class DeltaBatch:
    """One attempt's text on its way out: batched by time and size, or held until released."""

    send: Callable[[str], None]
    flush_s: float
    hold: bool = False
    clock: Callable[[], float] = time.monotonic
    pending: list[str] = field(default_factory=list)
    size: int = 0
    last: float = float("-inf")

    def add(self, text: str) -> None:
        text = storable(text)  # a NUL is stored as U+FFFD: the deltas show the stored text
        self.pending.append(text)
        self.size += len(text)
        if not self.hold and (self.size >= FLUSH_CHARS or self.clock() - self.last >= self.flush_s):
            self.flush()

    def flush(self) -> None:
        if self.pending and not self.hold:
            self.send("".join(self.pending))
            self.pending, self.size, self.last = [], 0, self.clock()

    @property
    def held(self) -> str:
        return "".join(self.pending) if self.hold else ""


@dataclass(kw_only=True)
class Streaming:
    """Runs stream jobs' attempts for a Runner (one per worker process, shared by threads)."""

    provider: Provider
    engine: Engine
    events: EventLog = field(default_factory=lambda: EventLog(client=None))
    flush_s: float = 0.05
    cancel_check_s: float = CANCEL_CHECK_S
    #: a held job's final text, published once the job succeeded
    _held: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, provider: Provider, engine: Engine, client: redis.Redis
    ) -> Streaming:
        events = EventLog(
            client=client, max_events=settings.stream_max_events, ttl_s=settings.stream_ttl_s
        )
        return cls(
            provider=provider, engine=engine, events=events, flush_s=settings.stream_flush_ms / 1000
        )

    def generate(self, call: Call, request: JobCreate, params: TextParams) -> TextResult:
        """One streamed attempt: its deltas published as they come, its answer checked as a
        plain one is. A cancel during the stream returns what came so far: the Runner's record
        of it then finds the cancel and ends the job `cancelled`."""
        self._start(call)
        hold = _moderation(request) == "block"
        batch = DeltaBatch(lambda text: self._delta(call.job_id, text), self.flush_s, hold=hold)
        watch = _CancelWatch(self.engine, call, self.cancel_check_s)
        try:
            result = self.provider.generate_text_stream(
                model=call.spec.id,
                messages=request.chat_messages(),
                params=params,
                on_delta=lambda text: (watch.check(), batch.add(text)),
            )
        except StreamStopped as stop:
            # billed the prompt and the text so far (counted when the provider sent no usage)
            return TextResult(text="", usage=stop.usage or Usage(), finish_reason=None)
        batch.flush()
        result = result if params.response_format is None else checked(result, params)
        if hold:
            with self._lock:
                self._held[call.job_id] = batch.held
        return result

    def _start(self, call: Call) -> None:
        """`status running`, and `retry` when text came before: from the second attempt on,
        and at a first attempt whose stream holds text (a run whose worker died mid-stream
        recorded no attempt, so its reclaimed run starts at attempt 1 again). One round trip
        unless that text is there."""
        retry = (RETRY, {"attempt": call.number, "model": call.spec.id})
        running = (STATUS, {"status": RUNNING})
        if call.number > 1:
            self.events.add(call.job_id, running, retry)
        elif self.events.add_after_text(call.job_id, running):
            self.events.add(call.job_id, retry)

    def _delta(self, job_id: str, text: str) -> None:
        self.events.add(job_id, (DELTA, {"text": text}))

    def ended(self, job_id: str, outcome: str) -> None:
        """After the run: a held job's text if it succeeded, then `end` if the job is over."""
        with self._lock:
            held = self._held.pop(job_id, "")
        if outcome not in ENDED:
            return
        entries = [(DELTA, {"text": held})] if held and outcome == "succeeded" else []
        self.events.add(job_id, *entries, (END, {"outcome": outcome}))


def _moderation(request: JobCreate) -> str | None:
    """The job's moderation mode as resolved at submit (`policy.moderation`), if any."""
    return getattr(request.policy, "moderation", None)


@dataclass
class _CancelWatch:
    """Reads the job's row at most every `every_s` while it streams: stops for a cancel."""

    engine: Engine
    call: Call
    every_s: float
    last: float = field(default_factory=time.monotonic)

    def check(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        with self.engine.connect() as conn:
            row = conn.execute(_CANCEL_STATE, {"job_id": self.call.job_id}).first()
        if row is None or row.claim_token != self.call.token or row.status != RUNNING:
            raise ClaimLost(self.call.job_id)
        if row.cancel_requested:
            raise StreamStopped
