"""Attempts (one row per provider call) and generated images, and how a job's totals follow them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from operator import itemgetter

from sqlalchemy import Column, DateTime, LargeBinary, Text, bindparam
from sqlmodel import Field, Session, SQLModel, select

from models.db import Money, utcnow
from models.jobs import Job, get_job, job_public
from models.schemas import AttemptPublic, JobPublic

SUCCEEDED, RETRYABLE, FAILED = "succeeded", "retryable_error", "failed"


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=32)
    number: int
    model: str = Field(max_length=100)
    provider: str = Field(max_length=32)
    worker: str | None = Field(default=None, max_length=200)
    outcome: str = Field(max_length=32)
    http_status: int | None = None
    error_type: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text))
    latency_ms: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    cost_usd: Decimal = Field(default=Decimal(0), sa_type=Money)
    started_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class Image(SQLModel, table=True):
    """Generated images live in the database: one transaction stores them with the job's end."""

    __tablename__ = "images"

    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=32)
    index: int = Field(primary_key=True)
    #: sniffed from the bytes (PNG, JPEG, WebP, GIF or SVG), and served as the Content-Type
    content_type: str = Field(default="image/png", max_length=64)
    #: None when the format does not say (an SVG without width/height or viewBox)
    width: int | None = None
    height: int | None = None
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


#: every column but the database's `id`, and the value each gets when not given. Reading the
#: mapper's attributes configures it now: an instance made below without the constructor (whose
#: first call would configure it) then has working attributes
_COLUMNS = [prop.key for prop in Attempt.__mapper__.column_attrs if prop.key != "id"]
_DEFAULTS = {
    name: field.default
    for name, field in Attempt.model_fields.items()
    if not field.is_required() and field.default_factory is None
}
_values = itemgetter(*_COLUMNS)
_new_instance = Attempt._sa_class_manager.new_instance


def new_attempt(**values) -> Attempt:
    """`Attempt(**values)` without SQLModel's constructor, which validates and sets each field
    through the ORM's attribute events (once per model call, on the worker's hot path).

    Made as the ORM makes a loaded instance (its state, then its values in `__dict__`), with
    pydantic's bookkeeping as the constructor leaves it: the same transient object, whose
    changes are tracked and which `session.add` stores (the careful paths add it)."""
    attempt = _new_instance()
    fields = attempt.__dict__
    fields.update(_DEFAULTS)
    fields["started_at"] = fields["finished_at"] = utcnow()
    fields.update(values)
    object.__setattr__(attempt, "__pydantic_fields_set__", set(values))
    object.__setattr__(attempt, "__pydantic_extra__", None)
    object.__setattr__(attempt, "__pydantic_private__", None)
    return attempt


def attempt_row(attempt: Attempt) -> dict:
    """The columns (but `id`) of a new attempt, for a Core INSERT: read from its `__dict__`,
    where a transient instance keeps every value (pydantic's `model_dump` costs ~8x)."""
    return dict(zip(_COLUMNS, _values(attempt.__dict__), strict=True))


def add_attempt(session: Session, *, job: Job, attempt: Attempt) -> None:
    """Store one provider call and fold its usage and cost into the job's totals."""
    session.add(attempt)
    job.attempts += 1
    job.prompt_tokens += attempt.prompt_tokens
    job.completion_tokens += attempt.completion_tokens
    job.cost_usd += attempt.cost_usd
    session.add(job)


_FAILED_ATTEMPTS = (
    select(Attempt.__table__.c.http_status, Attempt.__table__.c.error_type)
    .where(Attempt.__table__.c.job_id == bindparam("job_id"))
    .where(Attempt.__table__.c.outcome.in_([RETRYABLE, FAILED]))
)


def failed_attempts(session: Session, *, job_id: str) -> list[tuple[int | None, str | None]]:
    """(http_status, error_type) of each failed call of the job: what its retries have used
    (read only when a job given back to the queue runs again)."""
    return [tuple(row) for row in session.execute(_FAILED_ATTEMPTS, {"job_id": job_id})]


def get_image(session: Session, *, job_id: str, index: int) -> Image | None:
    return session.exec(select(Image).where(Image.job_id == job_id, Image.index == index)).first()


def list_attempts(session: Session, *, job_id: str) -> list[Attempt]:
    query = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number, Attempt.id)
    return list(session.exec(query))


def attempt_public(attempt: Attempt) -> AttemptPublic:
    """One provider call as the job's `attempt_log` shows it."""
    return AttemptPublic(
        number=attempt.number,
        model=attempt.model,
        provider=attempt.provider,
        worker=attempt.worker,
        outcome=attempt.outcome,
        http_status=attempt.http_status,
        error_type=attempt.error_type,
        latency_ms=attempt.latency_ms,
        prompt_tokens=attempt.prompt_tokens,
        completion_tokens=attempt.completion_tokens,
        cost_usd=attempt.cost_usd,
        started_at=attempt.started_at.isoformat() if attempt.started_at else None,
    )


def job_detail(session: Session, *, job_id: str, key_id: str) -> JobPublic:
    """The job as `GET /v1/jobs/{id}` shows it: with every provider call it made."""
    job = job_public(get_job(session, job_id=job_id, key_id=key_id))
    job.attempt_log = [attempt_public(a) for a in list_attempts(session, job_id=job_id)]
    return job
