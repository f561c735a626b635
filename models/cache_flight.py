"""Single flight: ending the followers of a finished leader (models/cache.py).

A leader that succeeded gives each waiting follower its output (no call, cost 0, a cache
hit); one that failed fails them with its error; one that was cancelled hands the request to
one follower, which becomes the new leader and runs (or to a leader an identical submit
started meanwhile), the others following it. Every change is conditional on the follower
still waiting, so the worker that ended the leader, the sweeper and a cancel can race on it:
each follower is ended once, its budget reservation released once, and its webhook's
delivery opened in the transaction that ends it (published on its commit).

A follower is never claimed, so no worker checks its deadline: the sweeper fails the followers
whose `deadline_at` passed while their leader still ran (`timeout`, like a job that ran out of
time; nothing spent), and the leader's end then finds them no longer waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from models.budgets import settle
from models.cache import find_leader
from models.db import db_moment, utcnow
from models.jobs import CANCELLED, FAILED, FINISHED, QUEUED, SUCCEEDED, Job
from models.webhooks import open_delivery

#: at most this many leaders (and this many overdue followers) per sweep
SWEEP_BATCH = 200
#: the end of a follower whose deadline passed while it waited, as a run's timeout says it
TIMEOUT, TIMEOUT_MESSAGE = "timeout", "the job's deadline passed before it finished"


@dataclass(frozen=True)
class Promoted:
    """A follower that now runs its request: the caller publishes it."""

    job_id: str
    kind: str


@dataclass
class Resolution:
    ended: list[str] = field(default_factory=list)
    promoted: Promoted | None = None


_JOBS = Job.__table__.c
_WAITING = (
    select(_JOBS.id, _JOBS.key_id, _JOBS.reserved_usd, _JOBS.kind, _JOBS.webhook_url)
    .where(_JOBS.cache_source_id == bindparam("leader_id"), _JOBS.status == QUEUED)
    .order_by(_JOBS.created_at, _JOBS.id)
    .with_for_update()
)


#: followers still waiting past their deadline, oldest first; a row a resolver holds is left
#: to it (it ends the follower now) or to the next sweep
_OVERDUE = (
    select(_JOBS.id, _JOBS.key_id, _JOBS.reserved_usd, _JOBS.webhook_url)
    .where(
        _JOBS.cache_source_id.is_not(None),
        _JOBS.status == QUEUED,
        _JOBS.deadline_at <= bindparam("now"),
    )
    .order_by(_JOBS.created_at, _JOBS.id)
    .limit(SWEEP_BATCH)
    .with_for_update(skip_locked=True)
)


def _end_waiting(leader_id: str, ids: list[str], **values):
    return (
        update(Job.__table__)
        .where(_JOBS.id.in_(ids), _JOBS.cache_source_id == leader_id, _JOBS.status == QUEUED)
        .values(reserved_usd=Decimal(0), lease_until=None, finished_at=utcnow(), **values)
        .returning(_JOBS.id)
    )


def resolve_followers(session: Session, *, leader_id: str) -> Resolution:
    """End (or hand the request on to) the followers still waiting for `leader_id`, if it
    has finished; nothing otherwise."""
    leader = session.get(Job, leader_id)
    if leader is None or leader.status not in FINISHED:
        return Resolution()
    waiting = session.execute(_WAITING, {"leader_id": leader_id}).all()
    if not waiting:
        return Resolution()
    if leader.status == CANCELLED:
        return _hand_on(session, leader, waiting)
    ids = [row.id for row in waiting]
    if leader.status == SUCCEEDED:
        values = {
            "status": SUCCEEDED,
            "model": leader.model,
            "provider": leader.provider,
            "output_text": leader.output_text,
            "finish_reason": leader.finish_reason,
            "output_data": leader.output_data,
            "image_count": leader.image_count,
            "image_meta": leader.image_meta,
            "moderation": leader.moderation,
            "cache_saved_usd": leader.cost_usd,
        }
    else:
        values = {
            "status": FAILED,
            "error_type": leader.error_type,
            "error_message": leader.error_message,
        }
    ended = list(session.execute(_end_waiting(leader_id, ids, **values)).scalars())
    _after_end(session, waiting, ended, status=values["status"])
    return Resolution(ended=ended)


def _after_end(session: Session, rows: list, ended: list[str], *, status: str) -> None:
    """What every end of followers does: their reservations released (nothing spent), and
    each one's webhook opened (a follower's end is a job end)."""
    by_id = {row.id: row for row in rows}
    released: dict[str, Decimal] = {}
    for job_id in ended:
        row = by_id[job_id]
        released[row.key_id] = released.get(row.key_id, Decimal(0)) + row.reserved_usd
    for key_id, reserved in sorted(released.items()):
        settle(session, key_id=key_id, reserved=reserved, cost=Decimal(0))
    for job_id in ended:
        row = by_id[job_id]
        if row.webhook_url is not None:
            open_delivery(
                session, job_id=job_id, key_id=row.key_id, status=status, url=row.webhook_url
            )


def end_overdue_followers(session: Session) -> list[str]:
    """Fail the followers whose deadline passed before their leader ended (`timeout`, cost 0,
    reservation released, webhook opened); the ids ended."""
    now = utcnow()
    overdue = session.execute(_OVERDUE, {"now": db_moment(session, now)}).all()
    if not overdue:
        return []
    ended = list(
        session.execute(
            update(Job.__table__)
            .where(
                _JOBS.id.in_([row.id for row in overdue]),
                _JOBS.cache_source_id.is_not(None),
                _JOBS.status == QUEUED,
            )
            .values(
                status=FAILED,
                error_type=TIMEOUT,
                error_message=TIMEOUT_MESSAGE,
                reserved_usd=Decimal(0),
                lease_until=None,
                finished_at=now,
            )
            .returning(_JOBS.id)
        ).scalars()
    )
    _after_end(session, overdue, ended, status=FAILED)
    return ended


def _hand_on(session: Session, leader: Job, waiting: list) -> Resolution:
    """The leader was cancelled: a leader that started meanwhile, or the oldest follower
    (published by the caller), runs the request; every other follower follows it."""
    successor = find_leader(session, key_id=leader.key_id, digest=leader.request_hash or "")
    promoted = None
    if successor is None:
        first = waiting[0]
        successor, promoted = first.id, Promoted(first.id, first.kind)
        taken = session.execute(
            update(Job.__table__)
            .where(_JOBS.id == successor, _JOBS.status == QUEUED)
            .values(cache_source_id=None, published_at=None)
        )
        if taken.rowcount != 1:  # cancelled meanwhile: the sweeper tries the next one
            return Resolution()
    session.execute(
        update(Job.__table__)
        .where(_JOBS.cache_source_id == leader.id, _JOBS.status == QUEUED)
        .values(cache_source_id=successor)
    )
    return Resolution(promoted=promoted)


#: finished leaders that still have waiting followers; built once: `aliased(Job)` per call made
#: every sweep miss SQLAlchemy's compiled cache (~6 ms of CPU a sweep, docs/performance.md)
_FOLLOWER, _LEADER = Job.__table__.alias("follower"), Job.__table__.alias("leader")
_STRANDED = (
    select(_FOLLOWER.c.cache_source_id)
    .join(_LEADER, _LEADER.c.id == _FOLLOWER.c.cache_source_id)
    .where(
        _FOLLOWER.c.cache_source_id.is_not(None),
        _FOLLOWER.c.status == QUEUED,
        _LEADER.c.status.in_(FINISHED),
    )
    .distinct()
    .limit(SWEEP_BATCH)
)


def stranded_leaders(session: Session) -> list[str]:
    """Finished leaders that still have waiting followers (their worker died before ending
    them): what the sweeper resolves."""
    return list(session.execute(_STRANDED).scalars())
