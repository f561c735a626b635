"""Jobs: the table, and the keyword-only functions that move a job through its life.

Status flow: queued → running → succeeded | failed. A worker owns a running job through a claim
token; finishing is guarded by that token, so a duplicate message can never run or finish a job
that another delivery has claimed.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    Column,
    DateTime,
    Index,
    String,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    insert,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, Row
from sqlmodel import Field, Session, SQLModel, col, select

from models.budgets import settle
from models.db import Money, db_moment, utcnow
from models.errors import InvalidRequest, JobNotFound
from models.keys import ApiKey  # noqa: F401  (the table jobs.key_id points at)
from models.lone import LoneStatement
from models.planning import Plan
from models.schemas import CachePublic, JobCreate, JobPublic, UsagePublic
from models.webhooks import open_delivery

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
#: the partial indexes of the response cache: jobs with the cache on; the one unfinished job
#: that runs a request (its leader); jobs waiting for their leader's output (its followers)
CACHED = "request_hash IS NOT NULL"
CACHE_LEADER = (
    "request_hash IS NOT NULL AND cache_source_id IS NULL AND status IN ('queued', 'running')"
)
CACHE_FOLLOWER = "cache_source_id IS NOT NULL AND status = 'queued'"


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("key_id", "idempotency_key", name="uq_jobs_key_idempotency"),
        Index("ix_jobs_key_created", "key_id", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_until"),
        # partial: plain jobs (no conversation) add no index entry on insert
        Index(
            "ix_jobs_conversation",
            "conversation_id",
            postgresql_where=text("conversation_id IS NOT NULL"),
            sqlite_where=text("conversation_id IS NOT NULL"),
        ),
        # partial: plain jobs (no batch) add no index entry on insert; with the status, "has
        # this batch an unfinished job" (checked as each of its jobs ends) is one seek
        Index(
            "ix_jobs_batch_status",
            "batch_id",
            "status",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        # partial: only webhook jobs whose end was not handed to a delivery yet (the sweeper's
        # safety net reads it); plain jobs add no entry
        Index(
            "ix_jobs_webhook_unsent",
            "status",
            postgresql_where=text("webhook_url IS NOT NULL AND webhook_id IS NULL"),
            sqlite_where=text("webhook_url IS NOT NULL AND webhook_id IS NULL"),
        ),
        # the response cache (models/cache.py); partial, so jobs without it add no entry
        Index(
            "ix_jobs_cache_lookup",
            "key_id",
            "request_hash",
            "finished_at",
            postgresql_where=text(CACHED),
            sqlite_where=text(CACHED),
        ),
        # single flight: at most one unfinished job runs each request of a key
        Index(
            "uq_jobs_cache_leader",
            "key_id",
            "request_hash",
            unique=True,
            postgresql_where=text(CACHE_LEADER),
            sqlite_where=text(CACHE_LEADER),
        ),
        Index(
            "ix_jobs_cache_followers",
            "cache_source_id",
            postgresql_where=text(CACHE_FOLLOWER),
            sqlite_where=text(CACHE_FOLLOWER),
        ),
    )

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, primary_key=True, max_length=32)
    key_id: str = Field(foreign_key="api_keys.id", max_length=32)
    kind: str = Field(max_length=16)
    status: str = Field(default=QUEUED, max_length=16, index=True)
    model: str = Field(max_length=100)
    provider: str | None = Field(default=None, max_length=32)
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    idempotency_key: str | None = Field(default=None, max_length=200)
    #: sha256 of the canonical request under that key: a replay must match it (models/idempotency)
    idempotency_fingerprint: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Field(default=Decimal(0), sa_type=Money)
    estimated_cost_usd: Decimal | None = Field(default=None, sa_type=Money)
    #: held against the key's budget until the job finishes, then settled to cost_usd
    reserved_usd: Decimal = Field(default=Decimal(0), sa_type=Money)
    #: the cost policy's decision: candidates, rejections, choice, fallbacks
    routing: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    output_text: str | None = Field(default=None, sa_column=Column(Text))
    #: why the model stopped: stop, length, tool_calls, content_filter
    finish_reason: str | None = Field(default=None, max_length=32)
    #: the rest of a text output, when there is any: `json` (parsed), `tool_calls`
    output_data: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    image_count: int = 0
    #: per image, what the job's output shows of it: content_type, and width/height when known
    image_meta: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    error_type: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    claim_token: str | None = Field(default=None, max_length=32)
    worker: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    #: outbox: when the job's message was last handed to the broker (None: not yet)
    published_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    #: the job fails with error type `timeout` if it has not finished by then
    deadline_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    cancel_requested: bool = False
    #: the conversation this job is a turn of (models/conversations.py), and what of it was sent
    conversation_id: str | None = Field(default=None, max_length=32)
    context: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    #: the OpenAI-compatible batch this job is a line of (models/batches.py): its id, the line's
    #: custom_id, and its 1-based line number (output files keep the input's order)
    batch_id: str | None = Field(default=None, max_length=64)
    custom_id: str | None = Field(default=None, max_length=512)
    batch_line: int | None = None
    #: moderation verdicts, `{"input": …, "output": …}` (models/moderation.py); None when off
    moderation: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    #: where genq POSTs the job's end (the job's own URL, else its key's default), and the
    #: `webhook-id` of that delivery once opened (models/webhooks.py)
    webhook_url: str | None = Field(default=None, sa_column=Column(Text))
    webhook_id: str | None = Field(default=None, max_length=40)
    #: response cache (models/cache.py): sha256 of the canonical request, set only when the
    #: cache is on for the job; the job whose output it reuses (a hit) or waits for (a
    #: follower); and what that job's provider calls cost (hits only)
    request_hash: str | None = Field(default=None, max_length=64)
    cache_source_id: str | None = Field(default=None, max_length=32)
    cache_saved_usd: Decimal | None = Field(default=None, sa_type=Money)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every genq datetime is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def job_from_plan(
    *,
    key_id: str,
    body: JobCreate,
    plan: Plan,
    idempotency_key: str | None = None,
    idempotency_fingerprint: str | None = None,
    deadline_s: int = 3600,
    webhook_url: str | None = None,
) -> Job:
    """A queued job for this request as the cost policy planned it (not yet stored); its
    webhook URL is the request's, else `webhook_url` (the key's default)."""
    return new_job(
        job_values(
            key_id=key_id,
            body=body,
            plan=plan,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
            deadline_s=deadline_s,
            webhook_url=webhook_url,
        )
    )


#: each field's default, and the fields whose default is made per job (`id`, `meta`, …)
_DEFAULTS = {
    name: field.default
    for name, field in Job.model_fields.items()
    if not field.is_required() and field.default_factory is None
}
_FACTORIES = [
    (name, field.default_factory)
    for name, field in Job.model_fields.items()
    if field.default_factory is not None
]
_new_instance = Job._sa_class_manager.new_instance


def new_job(values: dict[str, Any]) -> Job:
    """`Job(**values)` without its constructor's cost (~0.2 ms a job: SQLModel sets the ~46
    fields one by one through the ORM's attribute events, which a new job does not need).

    The instance is made as the ORM makes a loaded one: its state first, then the values in
    its `__dict__`; pydantic's bookkeeping as `Job(**values)` leaves it. It is the same
    transient object: a later change is tracked, and `session.add` stores it."""
    job = _new_instance()
    fields = job.__dict__
    fields.update(_DEFAULTS)
    for name, factory in _FACTORIES:
        if name not in values:
            fields[name] = factory()
    fields.update(values)
    object.__setattr__(job, "__pydantic_fields_set__", set(values))
    object.__setattr__(job, "__pydantic_extra__", None)
    object.__setattr__(job, "__pydantic_private__", None)
    return job


def job_values(
    *,
    key_id: str,
    body: JobCreate,
    plan: Plan,
    idempotency_key: str | None = None,
    idempotency_fingerprint: str | None = None,
    deadline_s: int = 3600,
    webhook_url: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The columns of a planned job, by attribute name: one Job, or one row of a bulk insert."""
    body = body.model_copy(update={"params": plan.params})
    now = now or utcnow()
    return {
        "created_at": now,
        # optimistic: the submit publishes next, and undoes this if it fails
        "published_at": now,
        "deadline_at": now + timedelta(seconds=body.deadline_s or deadline_s),
        "key_id": key_id,
        "kind": body.kind,
        "model": plan.spec.id,
        "request": body.model_dump(
            mode="json", exclude={"metadata", "webhook_url"}, exclude_none=True
        ),
        "webhook_url": body.webhook_url or webhook_url,
        "meta": body.metadata,
        "idempotency_key": idempotency_key,
        "idempotency_fingerprint": idempotency_fingerprint,
        "estimated_cost_usd": plan.estimated_cost_usd,
        "reserved_usd": plan.estimated_cost_usd,
        "routing": plan.routing.record(),
    }


#: built once: a submit stores its jobs through it (the ORM's unit of work, ~0.6 ms of CPU per
#: job, keeps nothing a submit needs: the jobs are not read again in its transaction)
_INSERT_JOB = insert(Job.__table__)
#: each column's (attribute, column key): `meta` is the column `metadata`
_COLUMNS = [(prop.key, prop.columns[0].key) for prop in Job.__mapper__.column_attrs]


def _row(job: Job) -> dict[str, Any]:
    return {column: getattr(job, attr) for attr, column in _COLUMNS}


def store_jobs(session: Session, jobs: list[Job]) -> None:
    """Insert new jobs, as they are, in the session's transaction (they stay out of it)."""
    rows = [_row(job) for job in jobs]
    session.execute(_INSERT_JOB, rows[0] if len(rows) == 1 else rows)


#: the same INSERT, every column bound, run alone (models/lone.py)
_INSERT_JOB_ALONE = LoneStatement(_INSERT_JOB, column_keys=[column for _, column in _COLUMNS])


def store_job_alone(engine: Engine, job: Job) -> None:
    """Insert one new job as its own autocommit statement, when it is all its transaction
    would hold."""
    _INSERT_JOB_ALONE.run(engine, _row(job))


def get_job(session: Session, *, job_id: str, key_id: str | None = None) -> Job:
    """The job, seen through `key_id` when given: another key's job does not exist for it."""
    job = session.get(Job, job_id)
    if job is None or (key_id is not None and job.key_id != key_id):
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def encode_cursor(job: Job) -> str:
    raw = f"{aware(job.created_at).isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), job_id
    except ValueError:
        raise InvalidRequest("cursor is not one that genq returned") from None


def list_jobs(
    session: Session,
    *,
    key_id: str,
    status: str | None,
    limit: int,
    cursor: str | None,
    batch_id: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated so pages stay stable while jobs are added."""
    query = select(Job).where(Job.key_id == key_id)
    if status:
        query = query.where(Job.status == status)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        stamp = db_moment(session, stamp)
        query = query.where(
            (col(Job.created_at) < stamp)
            | ((col(Job.created_at) == stamp) & (col(Job.id) < last_id))
        )
    query = query.order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(limit + 1)
    rows = list(session.exec(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]) if more else None)


#: Built once, on the table rather than the ORM entity: an ORM statement is re-annotated and
#: re-keyed on every execution, a Core one only once (worker CPU per job, see docs/performance.md).
_JOBS = Job.__table__.c


def _claim_statement(which: Any) -> Any:
    """The claim of the jobs `which` selects: each moves from queued to running and reads back
    what running it needs, in one `UPDATE … RETURNING` (PostgreSQL, SQLite ≥ 3.35)."""
    return (
        update(Job.__table__)
        # a follower of the response cache never runs: its leader's output ends it
        .where(which, _JOBS.status == QUEUED, _JOBS.cache_source_id.is_(None))
        .values(
            status=RUNNING,
            claim_token=bindparam("token"),
            worker=bindparam("worker"),
            started_at=bindparam("now"),
            lease_until=bindparam("lease_until"),
        )
        # what running the job reads, not the whole row (each column returned is decoded: the
        # JSON ones parsed)
        .returning(*(_JOBS[name] for name in _CLAIMED))
    )


_CLAIMED = (
    "id",
    "claim_token",
    "key_id",
    "kind",
    "model",
    "request",
    "routing",
    "attempts",
    "deadline_at",
    "reserved_usd",
    "cancel_requested",
    "conversation_id",
    "context",
    "batch_id",
    "moderation",
    "request_hash",
    "webhook_url",
)
_CLAIM = _claim_statement(_JOBS.id == bindparam("job_id"))
#: several claims as one autocommit statement: on PostgreSQL an array of ids, straight on
#: psycopg (models/lone.py); elsewhere (SQLite) an expanded `IN`
_CLAIM_ANY = LoneStatement(
    _claim_statement(_JOBS.id == any_(bindparam("job_ids", type_=ARRAY(String()))))
)
_CLAIM_IN = LoneStatement(_claim_statement(_JOBS.id.in_(bindparam("job_ids", expanding=True))))


def claim_many(
    engine: Engine, *, job_ids: Sequence[str], worker: str, lease_s: int
) -> dict[str, Row]:
    """Claim several jobs at once, each as `claim_job` would, in one autocommit statement (the
    UPDATE is atomic by itself); the rows claimed, by job id (one not queued, or unknown, is
    missing). Jobs claimed together share one claim token: everywhere a claim is checked, it
    is its job id and its token together, so each is still its own claim (worker/claims.py
    says why they are grouped)."""
    statement = _CLAIM_ANY if engine.dialect.name == "postgresql" else _CLAIM_IN
    rows = statement.all(engine, _claim_params(worker, lease_s) | {"job_ids": list(job_ids)})
    return {row.id: row for row in rows}


def claim(engine: Engine, *, job_id: str, worker: str, lease_s: int) -> Row | None:
    """`claim_job` as its own autocommit statement (the one UPDATE is atomic by itself)."""
    return claim_many(engine, job_ids=[job_id], worker=worker, lease_s=lease_s).get(job_id)


def claim_job(
    session: Session | Connection, *, job_id: str, worker: str, lease_s: int
) -> Row | None:
    """Atomically move a queued job to running; the claimed job's row (what the Runner reads,
    columns by name; its `claim_token` is the claim), or None if another delivery took it or
    it is not queued.

    One `UPDATE … RETURNING` both claims and loads the job (PostgreSQL, SQLite ≥ 3.35).
    """
    params = _claim_params(worker, lease_s) | {"job_id": job_id}
    return session.execute(_CLAIM, params).first()


def _claim_params(worker: str, lease_s: int) -> dict[str, Any]:
    now = utcnow()
    return {
        "token": uuid.uuid4().hex,
        "worker": worker,
        "now": now,
        "lease_until": now + timedelta(seconds=lease_s),
    }


def finish_job(
    session: Session,
    *,
    job: Job,
    status: str,
    error_type: str | None = None,
    error: str | None = None,
) -> None:
    """End the job and settle its budget reservation to its real cost (caller's transaction);
    a webhook job's delivery is opened in the same transaction."""
    job.status = status
    job.error_type = error_type
    job.error_message = error
    job.finished_at = utcnow()
    job.lease_until = None
    reserved, job.reserved_usd = job.reserved_usd, Decimal(0)
    session.add(job)
    settle(session, key_id=job.key_id, reserved=reserved, cost=job.cost_usd)
    if job.webhook_url is not None:
        opened = open_delivery(
            session, job_id=job.id, key_id=job.key_id, status=status, url=job.webhook_url
        )
        job.webhook_id = opened or job.webhook_id


def owned_job(session: Session, *, job_id: str, token: str) -> Job | None:
    """The running job if this claim still owns it (row-locked on PostgreSQL)."""
    query = select(Job).where(Job.id == job_id, Job.status == RUNNING, Job.claim_token == token)
    return session.exec(query.with_for_update()).first()


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment else None


def _images_public(job: Job) -> list[dict[str, Any]]:
    """Each image's URL, sniffed content type and, when known, size (from the job row alone)."""
    meta = job.image_meta or [{"content_type": "image/png"}] * job.image_count
    return [{"url": f"/v1/jobs/{job.id}/images/{i}", **m} for i, m in enumerate(meta)]


def is_cache_hit(job: Job) -> bool:
    """Whether the job's output is another job's (`cache_source_id`), reused without a call."""
    return job.status == SUCCEEDED and job.cache_source_id is not None


def _cache_public(job: Job) -> CachePublic:
    return CachePublic(
        hit=is_cache_hit(job),
        source_job_id=job.cache_source_id,
        saved_usd=job.cache_saved_usd or Decimal(0),
    )


def job_public(job: Job) -> JobPublic:
    """The contract-v1 view of a job."""
    output: dict[str, Any] | None = None
    if job.status == SUCCEEDED and job.kind == "text":
        output = {"text": job.output_text, "finish_reason": job.finish_reason}
        if job.output_data:
            output.update(job.output_data)
    elif job.status == SUCCEEDED:
        output = {"images": _images_public(job)}
    error = {"type": job.error_type, "message": job.error_message or ""} if job.error_type else None
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        model=job.model,
        provider=job.provider,
        attempts=job.attempts,
        output=output,
        usage=UsagePublic(
            prompt_tokens=job.prompt_tokens,
            completion_tokens=job.completion_tokens,
            total_tokens=job.prompt_tokens + job.completion_tokens,
        ),
        cost_usd=job.cost_usd,
        estimated_cost_usd=job.estimated_cost_usd,
        error=error,
        metadata=job.meta or {},
        routing=job.routing,
        conversation_id=job.conversation_id,
        context=job.context,
        batch_id=job.batch_id,
        custom_id=job.custom_id,
        moderation=job.moderation,
        cache=_cache_public(job) if job.request_hash is not None else None,
        created_at=_iso(job.created_at),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
    )
