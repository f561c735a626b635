"""Writing what a provider call did: one attempt row, and the job's end, guarded by the claim.

A write succeeds only while this run still owns the job (status running, same claim token);
otherwise ClaimLost tells the Runner to stop without touching the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.attempts import Attempt, Image, add_attempt
from models.budgets import settle
from models.catalogue import ModelSpec
from models.db import session_scope, utcnow
from models.jobs import FINISHED, Job, finish_job, owned_job
from models.pricing import Usage, cost_of
from worker.providers.base import ImageResult, TextResult

#: attempt outcomes beyond succeeded / retryable_error / failed
CANCELLED_AFTER_CALL = "cancelled"


class ClaimLost(Exception):
    """Another delivery owns the job now; this one must stop without writing."""


@dataclass(frozen=True, kw_only=True)
class Call:
    """One provider call in flight: which job, under which claim, which attempt, which model."""

    job_id: str
    token: str
    number: int
    spec: ModelSpec
    worker: str
    provider: str
    started_at: datetime = field(default_factory=utcnow)
    clock: float = field(default_factory=time.perf_counter)

    def attempt(self, *, outcome: str, usage: Usage, **extra) -> Attempt:
        return Attempt(
            job_id=self.job_id,
            number=self.number,
            model=self.spec.id,
            provider=self.provider,
            worker=self.worker,
            outcome=outcome,
            started_at=self.started_at,
            latency_ms=round((time.perf_counter() - self.clock) * 1000),
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            images=usage.images,
            cost_usd=cost_of(self.spec, usage),
            **extra,
        )


def owned(session: Session, call: Call) -> Job:
    job = owned_job(session, job_id=call.job_id, token=call.token)
    if job is None:
        raise ClaimLost(call.job_id)
    return job


def record(
    engine: Engine,
    call: Call,
    attempt: Attempt,
    *,
    finish: str | None = None,
    error_type: str | None = None,
    error: str | None = None,
) -> Job:
    """Store the attempt and fold it into the job; with `finish`, end the job in the same
    transaction."""
    with session_scope(engine) as session:
        job = owned(session, call)
        job.provider = call.provider
        add_attempt(session, job=job, attempt=attempt)
        if finish:
            finish_job(session, job=job, status=finish, error_type=error_type, error=error)
    return job


def record_output(
    engine: Engine, call: Call, attempt: Attempt, result: TextResult | ImageResult, status: str
) -> Job:
    """The successful attempt, its output and the job's end: one transaction.

    A cancel requested during the call wins: the attempt (its usage was spent) is recorded as
    `cancelled` and the job ends cancelled, without the output.
    """
    with session_scope(engine) as session:
        job = owned(session, call)
        job.provider, job.model = call.provider, call.spec.id
        if job.cancel_requested:
            attempt.outcome = CANCELLED_AFTER_CALL
            add_attempt(session, job=job, attempt=attempt)
            finish_job(
                session,
                job=job,
                status="cancelled",
                error_type="cancelled",
                error="cancelled while running",
            )
            return job
        add_attempt(session, job=job, attempt=attempt)
        if isinstance(result, TextResult):
            job.output_text = result.text
        else:
            for index, image in enumerate(result.images):
                session.add(
                    Image(
                        job_id=job.id,
                        index=index,
                        data=image.data,
                        width=image.width,
                        height=image.height,
                        content_type=image.content_type,
                    )
                )
            job.image_count = len(result.images)
        finish_job(session, job=job, status=status)
    return job


def finish_owned(
    engine: Engine, *, job_id: str, token: str, status: str, error_type: str, error: str
) -> bool:
    """End a claimed job without an attempt (deadline passed, cancelled, model gone)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id=job_id, token=token)
        if job is None:
            return False
        finish_job(session, job=job, status=status, error_type=error_type, error=error)
    return True


def record_orphan(engine: Engine, attempt: Attempt) -> None:
    """A call that finished after its claim was lost still cost money: count it on the job."""
    with session_scope(engine) as session:
        job = session.get(Job, attempt.job_id)
        if job is not None:
            add_attempt(session, job=job, attempt=attempt)
            if job.status in FINISHED:  # already settled: charge the key for this call too
                settle(session, key_id=job.key_id, reserved=Decimal(0), cost=attempt.cost_usd)
