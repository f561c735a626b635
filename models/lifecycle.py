"""Leases, the outbox and cancellation: the state changes that keep accepted jobs from being lost.

Every change is one conditional UPDATE, so two processes racing on a job (a worker and the
sweeper, or a cancel and a claim) cannot both win.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, update
from sqlmodel import Session, col, select

from models.db import db_moment, utcnow
from models.errors import Conflict
from models.jobs import CANCELLED, FINISHED, QUEUED, RUNNING, Job, aware, finish_job, get_job

#: a submit publishes its own job; the sweeper leaves fresh jobs alone for this long
PUBLISH_GRACE_S = 10
#: at most this many jobs per sweep, so one sweep stays short
SWEEP_BATCH = 500


#: Built once (a statement built per call costs ~0.6 ms of CPU to key): the leases of the held
#: claims still running, by job id and claim token (a token names one claim of one job)
_JOBS = Job.__table__.c
_RENEW = (
    update(Job.__table__)
    .where(
        _JOBS.id.in_(bindparam("ids", expanding=True)),
        _JOBS.claim_token.in_(bindparam("tokens", expanding=True)),
        _JOBS.status == RUNNING,
    )
    .values(lease_until=bindparam("until"))
    .returning(_JOBS.id)
)


def renew_leases(session: Session, *, held: dict[str, str], lease_s: int) -> set[str]:
    """Extend the leases of running jobs (job id → claim token), SWEEP_BATCH per statement; the
    ids renewed (a held job missing from it lost its claim: it was reclaimed).

    One statement for many: a worker holding 1,000 calls renewed them one transaction each, which
    took longer than a short lease under load, so live jobs were reclaimed and run twice."""
    until = utcnow() + timedelta(seconds=lease_s)
    pairs = list(held.items())
    renewed: set[str] = set()
    for start in range(0, len(pairs), SWEEP_BATCH):
        chunk = pairs[start : start + SWEEP_BATCH]
        rows = session.execute(
            _RENEW,
            {"ids": [job for job, _ in chunk], "tokens": [t for _, t in chunk], "until": until},
        )
        renewed.update(row.id for row in rows)
    return renewed


def release(session: Session, *, job_id: str, token: str, publishing: bool = False) -> bool:
    """Give a running job back to the queue (shutdown, long wait). `publishing`: the caller
    publishes it now with its countdown, so it is marked published (the sweeper must not publish
    it again before the countdown, a retry before Retry-After); otherwise the sweeper does."""
    result = session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == RUNNING, col(Job.claim_token) == token)
        .values(
            status=QUEUED,
            claim_token=None,
            lease_until=None,
            published_at=utcnow() if publishing else None,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


#: what the sweeper publishes: job id, kind, and whether it goes to its kind's batch lane
Due = tuple[str, str, bool]


def reclaim_expired(session: Session, *, now: datetime | None = None) -> list[Due]:
    """Running jobs whose lease ran out (their worker died) go back to queued; (id, kind,
    batch) each, for the caller to publish now."""
    expired = (
        col(Job.status) == RUNNING,
        col(Job.lease_until) < db_moment(session, now or utcnow()),
    )
    query = select(Job.id, Job.kind, Job.batch_id).where(*expired).limit(SWEEP_BATCH)
    rows = [(r[0], r[1], r[2] is not None) for r in session.exec(query)]
    if rows:
        session.execute(
            update(Job)
            .where(col(Job.id).in_([row[0] for row in rows]), *expired)
            .values(status=QUEUED, claim_token=None, lease_until=None, published_at=None)
            .execution_options(synchronize_session=False)
        )
    return rows


def due_for_publish(
    session: Session,
    *,
    redispatch_after_s: int,
    now: datetime | None = None,
    busy_batch_kinds: Collection[str] = (),
) -> list[Due]:
    """Queued jobs never published, or published so long ago that the message may be lost.

    A batch job waits in its lane as long as the lane is long (hours for a large batch): while
    its kind's lane still holds messages (`busy_batch_kinds`, the sweeper's LLEN), its old
    message is not presumed lost; once the lane drains, a job still queued is published again.
    """
    now = now or utcnow()
    unpublished_before = db_moment(session, now - timedelta(seconds=PUBLISH_GRACE_S))
    stale = col(Job.published_at) < db_moment(session, now - timedelta(seconds=redispatch_after_s))
    if busy_batch_kinds:
        stale &= col(Job.batch_id).is_(None) | col(Job.kind).not_in(list(busy_batch_kinds))
    query = (
        select(Job.id, Job.kind, Job.batch_id)
        .where(col(Job.status) == QUEUED)
        .where(col(Job.cache_source_id).is_(None))  # a cache follower waits for its leader
        .where(
            or_(col(Job.published_at).is_(None) & (col(Job.created_at) < unpublished_before), stale)
        )
        .limit(SWEEP_BATCH)
    )
    return [(row[0], row[1], row[2] is not None) for row in session.exec(query)]


def still_waiting(session: Session, *, taken: dict[str, datetime]) -> set[str]:
    """Of these jobs (job id → when a message of it was taken), those still queued and published
    no later than that message was taken: that message is theirs to run. A job published again
    since (a retry's countdown message) would run too early from the older one.

    Both times come from the worker that took the message and, for a retry, published it again,
    so one clock; a job published by the API on a host whose clock runs ahead of the worker's by
    more than its queueing time is not given back here and waits for `redispatch_after_s`."""
    if not taken:
        return set()
    rows = session.execute(
        select(Job.id, Job.published_at).where(
            col(Job.id).in_(list(taken)), col(Job.status) == QUEUED
        )
    )
    return {
        job_id
        for job_id, published_at in rows
        if published_at is None or aware(published_at) <= taken[job_id]
    }


def mark_published(session: Session, *, job_ids: list[str]) -> None:
    session.execute(
        update(Job)
        .where(col(Job.id).in_(job_ids))
        .values(published_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def cancel_job(session: Session, *, job_id: str, key_id: str) -> Job:
    """Queued: cancelled now, never runs. Running: stops at its next safe point. Finished: 409."""
    job = get_job(session, job_id=job_id, key_id=key_id)
    queued = session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == QUEUED)
        .values(status=CANCELLED)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    if queued.rowcount == 1:
        finish_job(
            session,
            job=job,
            status=CANCELLED,
            error_type="cancelled",
            error="cancelled before it ran",
        )
    elif job.status == RUNNING:
        job.cancel_requested = True
        session.add(job)
    elif job.status in FINISHED:
        raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs cancel")
    return job


def unpublish(session: Session, *, job_id: str) -> None:
    """The submit could not publish: mark the job for the sweeper to publish."""
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == QUEUED)
        .values(published_at=None)
        .execution_options(synchronize_session=False)
    )
