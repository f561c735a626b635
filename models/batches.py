"""Batches, as OpenAI's Batch API has them: an input file whose lines became genq jobs.

Status flow (OpenAI's): validating → in_progress → finalizing → completed, or failed (a bad
file: `errors` says which lines, no job exists), or cancelling → cancelled, or expired. Each line
is a job carrying `batch_id`, `custom_id` and `batch_line`; counts, usage and cost are summed
from those jobs, so they are live while the batch runs.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, bindparam, func, select
from sqlmodel import Field, Session, SQLModel, col
from sqlmodel import select as sql_select

from models.batch_schemas import (
    BatchErrors,
    BatchPublic,
    BatchUsage,
    RequestCounts,
)
from models.db import Money, utcnow
from models.errors import BatchNotFound
from models.files import unix
from models.jobs import FAILED, SUCCEEDED, Job
from models.keys import ApiKey  # noqa: F401  (the table batches.key_id points at)

VALIDATING, FAILED_BATCH, IN_PROGRESS, FINALIZING, COMPLETED = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
)
EXPIRED, CANCELLING, CANCELLED = "expired", "cancelling", "cancelled"
BATCH_STATUSES = (
    VALIDATING,
    FAILED_BATCH,
    IN_PROGRESS,
    FINALIZING,
    COMPLETED,
    EXPIRED,
    CANCELLING,
    CANCELLED,
)
#: a batch in one of these changes no more
BATCH_FINISHED = (FAILED_BATCH, COMPLETED, EXPIRED, CANCELLED)


def new_batch_id() -> str:
    """`batch_` and 32 hex digits, the shape of OpenAI's ids."""
    return "batch_" + secrets.token_hex(16)


def _moment() -> Any:
    return Field(default=None, sa_type=DateTime(timezone=True))


class Batch(SQLModel, table=True):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_key_created", "key_id", "created_at", "id"),)

    id: str = Field(default_factory=new_batch_id, primary_key=True, max_length=64)
    key_id: str = Field(foreign_key="api_keys.id", max_length=32)
    status: str = Field(default=VALIDATING, max_length=16)
    endpoint: str = Field(max_length=64)
    input_file_id: str = Field(max_length=64)
    completion_window: str = Field(default="24h", max_length=16)
    output_file_id: str | None = Field(default=None, max_length=64)
    error_file_id: str | None = Field(default=None, max_length=64)
    #: OpenAI's errors object (`{"object": "list", "data": [{code, message, param, line}]}`)
    errors: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    #: requests (lines, hence jobs) in the batch
    total: int = 0
    #: the whole batch's worst case, reserved against the key's budget at create (each job holds
    #: its own share in jobs.reserved_usd and settles it when it finishes)
    reserved_usd: Decimal = Field(default=Decimal(0), sa_type=Money)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    in_progress_at: datetime | None = _moment()
    expires_at: datetime | None = _moment()
    finalizing_at: datetime | None = _moment()
    completed_at: datetime | None = _moment()
    failed_at: datetime | None = _moment()
    expired_at: datetime | None = _moment()
    cancelling_at: datetime | None = _moment()
    cancelled_at: datetime | None = _moment()


def get_batch(session: Session, *, batch_id: str, key_id: str) -> Batch:
    """The batch as `key_id` sees it: another key's batch does not exist for it."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.key_id != key_id:
        raise BatchNotFound(f"no batch with id {batch_id!r}")
    return batch


def list_batches(
    session: Session, *, key_id: str, limit: int, after: str | None
) -> tuple[list[Batch], bool]:
    """The key's batches, newest first, after the batch `after`; whether more follow."""
    query = sql_select(Batch).where(Batch.key_id == key_id)
    created, ident = col(Batch.created_at), col(Batch.id)
    if after:
        mark = get_batch(session, batch_id=after, key_id=key_id)
        query = query.where(
            (created < mark.created_at) | ((created == mark.created_at) & (ident < mark.id))
        )
    rows = list(session.exec(query.order_by(created.desc(), ident.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


_JOBS = Job.__table__.c
#: one grouped read over the batch's jobs (the partial index on batch_id): counts, tokens, cost
_TALLY = (
    select(
        _JOBS.status,
        func.count(),
        func.coalesce(func.sum(_JOBS.prompt_tokens), 0),
        func.coalesce(func.sum(_JOBS.completion_tokens), 0),
        func.sum(_JOBS.cost_usd, type_=Money()),
    )
    .where(_JOBS.batch_id == bindparam("batch_id"))
    .group_by(_JOBS.status)
)


def batch_tally(session: Session, *, batch_id: str) -> dict[str, Any]:
    """What the batch's jobs did so far: per status counts, tokens and cost."""
    tally: dict[str, Any] = {"by_status": {}, "input": 0, "output": 0, "cost": Decimal(0)}
    for status, count, prompt, completion, cost in session.execute(_TALLY, {"batch_id": batch_id}):
        tally["by_status"][status] = count
        tally["input"] += int(prompt)
        tally["output"] += int(completion)
        tally["cost"] += cost or Decimal(0)
    return tally


def batch_public(session: Session, batch: Batch) -> BatchPublic:
    """OpenAI's Batch object, counts and usage summed from the batch's jobs now."""
    tally = batch_tally(session, batch_id=batch.id)
    by_status = tally["by_status"]
    return BatchPublic(
        id=batch.id,
        endpoint=batch.endpoint,
        errors=BatchErrors.model_validate(batch.errors) if batch.errors else None,
        input_file_id=batch.input_file_id,
        completion_window=batch.completion_window,
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=unix(batch.created_at),
        in_progress_at=unix(batch.in_progress_at),
        expires_at=unix(batch.expires_at),
        finalizing_at=unix(batch.finalizing_at),
        completed_at=unix(batch.completed_at),
        failed_at=unix(batch.failed_at),
        expired_at=unix(batch.expired_at),
        cancelling_at=unix(batch.cancelling_at),
        cancelled_at=unix(batch.cancelled_at),
        request_counts=RequestCounts(
            total=batch.total,
            completed=by_status.get(SUCCEEDED, 0),
            failed=by_status.get(FAILED, 0),
        ),
        metadata=batch.meta,
        usage=BatchUsage(
            input_tokens=tally["input"],
            output_tokens=tally["output"],
            total_tokens=tally["input"] + tally["output"],
        ),
        cost_usd=tally["cost"],
    )
