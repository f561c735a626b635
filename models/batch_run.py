"""A batch after create: cancel, expiry, and the guarded step into `finalizing`.

Every step is one conditional UPDATE (status compare-and-set), so an API cancel, a worker
finishing the batch's last job and the sweeper can race without two of them winning: only the
claim into `finalizing` builds the output files (models/batch_output.py), and it ends the batch
as `completed`, `cancelled` (it was cancelling) or `expired` (its window passed).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import bindparam, exists, select, update
from sqlmodel import Session

from models.batches import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FINALIZING,
    IN_PROGRESS,
    VALIDATING,
    Batch,
    get_batch,
)
from models.budgets import settle
from models.db import db_moment, utcnow
from models.errors import Conflict
from models.jobs import CANCELLED as JOB_CANCELLED
from models.jobs import QUEUED, RUNNING, Job

#: error codes of the lines a cancel or the completion window stopped (OpenAI's)
BATCH_CANCELLED, BATCH_EXPIRED = "batch_cancelled", "batch_expired"
STOPPED = {
    BATCH_CANCELLED: "the batch was cancelled before this request ran",
    BATCH_EXPIRED: "the batch's completion window passed before this request ran",
}
#: a batch stuck in `finalizing` this long (its builder died) is built again by the sweeper
FINALIZE_STALE_S = 600
#: at most this many batches per sweep and per kind of step
SWEEP_BATCHES = 50

_JOBS, _BATCHES = Job.__table__.c, Batch.__table__.c
#: the (batch_id, status) partial index answers this with one seek
_UNFINISHED = select(
    exists().where(_JOBS.batch_id == bindparam("batch_id"), _JOBS.status.in_((QUEUED, RUNNING)))
)
_RUNNING = select(exists().where(_JOBS.batch_id == bindparam("batch_id"), _JOBS.status == RUNNING))
_CLAIM = (
    update(Batch.__table__)
    .where(
        _BATCHES.id == bindparam("batch_id"),
        _BATCHES.status.in_((IN_PROGRESS, CANCELLING)),
        ~exists().where(_JOBS.batch_id == _BATCHES.id, _JOBS.status.in_((QUEUED, RUNNING))),
    )
    .values(status=FINALIZING, finalizing_at=bindparam("now"))
)
_RECLAIM = (
    update(Batch.__table__)
    .where(
        _BATCHES.id == bindparam("batch_id"),
        _BATCHES.status == FINALIZING,
        _BATCHES.finalizing_at == bindparam("seen"),
    )
    .values(finalizing_at=bindparam("now"))
)
_STOP_QUEUED = (
    update(Job.__table__)
    .where(_JOBS.batch_id == bindparam("the_batch"), _JOBS.status == QUEUED)
    .values(
        status=JOB_CANCELLED,
        error_type=bindparam("code"),
        error_message=bindparam("message"),
        finished_at=bindparam("now"),
        lease_until=None,
    )
    # still held, and what earlier runs already cost (a job given back to the queue): settled below
    .returning(_JOBS.key_id, _JOBS.reserved_usd, _JOBS.cost_usd)
)
_RELEASED = (
    update(Job.__table__)
    .where(
        _JOBS.batch_id == bindparam("the_batch"),
        _JOBS.status == JOB_CANCELLED,
        _JOBS.reserved_usd != 0,
    )
    .values(reserved_usd=Decimal(0))
)
_STOP_RUNNING = (
    update(Job.__table__)
    .where(_JOBS.batch_id == bindparam("the_batch"), _JOBS.status == RUNNING)
    .values(cancel_requested=True)
)


def has_unfinished_jobs(session: Session, *, batch_id: str) -> bool:
    """Whether a job of the batch is still queued or running (one index seek)."""
    return bool(session.execute(_UNFINISHED, {"batch_id": batch_id}).scalar())


def claim_finalizing(session: Session, *, batch_id: str, now: datetime | None = None) -> bool:
    """Move a running or cancelling batch whose jobs all ended to `finalizing`; True for the one
    caller that did it (it builds the files)."""
    result = session.execute(_CLAIM, {"batch_id": batch_id, "now": now or utcnow()})
    return result.rowcount == 1


def reclaim_finalizing(session: Session, *, batch: Batch, now: datetime | None = None) -> bool:
    """Take over a batch whose builder died in `finalizing` (compare-and-set on its moment)."""
    params = {"batch_id": batch.id, "seen": batch.finalizing_at, "now": now or utcnow()}
    return session.execute(_RECLAIM, params).rowcount == 1


def final_status(batch: Batch) -> str:
    """What a finalized batch becomes: cancelled or expired when it was stopped, else completed."""
    if batch.cancelling_at is not None:
        return CANCELLED
    return EXPIRED if batch.expired_at is not None else COMPLETED


def stop_jobs(session: Session, *, batch_id: str, code: str, message: str) -> int:
    """Cancel the batch's queued jobs at once (their budget released) and ask its running ones
    to stop at their next safe point; returns how many queued jobs were cancelled.

    Lock order: every job row first, the key's budget row last. A worker finishing one of the
    running jobs holds that job's row and then takes the key's row; taking the key's row before
    the running jobs' rows here deadlocked with it on PostgreSQL (the cancel answered 503)."""
    now = utcnow()
    params = {"the_batch": batch_id, "code": code, "message": message, "now": now}
    released: dict[str, tuple[Decimal, Decimal]] = {}
    count = 0
    for key_id, reserved, cost in session.execute(_STOP_QUEUED, params):
        held, spent = released.get(key_id, (Decimal(0), Decimal(0)))
        released[key_id] = (held + (reserved or Decimal(0)), spent + (cost or Decimal(0)))
        count += 1
    if count:
        session.execute(_RELEASED, {"the_batch": batch_id})
    session.execute(_STOP_RUNNING, {"the_batch": batch_id})
    for key_id, (reserved, cost) in released.items():
        settle(session, key_id=key_id, reserved=reserved, cost=cost)
    return count


def cancel_batch(session: Session, *, batch_id: str, key_id: str) -> Batch:
    """`POST /v1/batches/{id}/cancel`: the batch becomes `cancelling`, its queued jobs are
    cancelled, its running ones asked to stop. Cancelling again is a no-op; 409 once it ended."""
    batch = get_batch(session, batch_id=batch_id, key_id=key_id)
    moved = session.execute(
        update(Batch.__table__)
        .where(_BATCHES.id == batch_id, _BATCHES.status.in_((VALIDATING, IN_PROGRESS)))
        .values(status=CANCELLING, cancelling_at=utcnow())
    )
    session.refresh(batch)
    if moved.rowcount == 0 and batch.status != CANCELLING:
        raise Conflict(f"batch {batch_id} is {batch.status}; only a running batch cancels")
    stop_jobs(session, batch_id=batch_id, code=BATCH_CANCELLED, message=STOPPED[BATCH_CANCELLED])
    return batch


def expire_due(session: Session, *, now: datetime | None = None) -> list[str]:
    """Batches past their completion window: marked expired, their unfinished jobs stopped;
    their ids (each is finalized once no job of it runs)."""
    moment = db_moment(session, now or utcnow())
    due = select(_BATCHES.id).where(
        _BATCHES.status == IN_PROGRESS,
        _BATCHES.expired_at.is_(None),
        _BATCHES.expires_at < moment,
    )
    expired = []
    for batch_id in session.execute(due.limit(SWEEP_BATCHES)).scalars():
        marked = session.execute(
            update(Batch.__table__)
            .where(
                _BATCHES.id == batch_id,
                _BATCHES.status == IN_PROGRESS,
                _BATCHES.expired_at.is_(None),
            )
            .values(expired_at=now or utcnow())
        )
        if marked.rowcount == 1:
            stop_jobs(
                session, batch_id=batch_id, code=BATCH_EXPIRED, message=STOPPED[BATCH_EXPIRED]
            )
            expired.append(batch_id)
    return expired


def batches_to_finalize(
    session: Session, *, now: datetime | None = None
) -> tuple[list[str], list[Batch]]:
    """Running or cancelling batches with no unfinished job, and batches whose builder died:
    what the sweeper finalizes (each claim still decides who builds)."""
    now = now or utcnow()
    done = select(_BATCHES.id).where(
        _BATCHES.status.in_((IN_PROGRESS, CANCELLING)),
        ~exists().where(_JOBS.batch_id == _BATCHES.id, _JOBS.status.in_((QUEUED, RUNNING))),
    )
    stale = select(Batch).where(
        Batch.status == FINALIZING,
        Batch.finalizing_at < db_moment(session, now - timedelta(seconds=FINALIZE_STALE_S)),
    )
    ids = list(session.execute(done.limit(SWEEP_BATCHES)).scalars())
    return ids, list(session.execute(stale.limit(SWEEP_BATCHES)).scalars())


def stop_stopping(session: Session) -> int:
    """Cancelling batches, and expired ones still running: stop their jobs queued since (a
    create racing the cancel, a job given back to the queue); how many were cancelled."""
    query = select(_BATCHES.id, _BATCHES.status).where(
        _BATCHES.status.in_((CANCELLING, IN_PROGRESS)),
        (_BATCHES.status == CANCELLING) | _BATCHES.expired_at.is_not(None),
        exists().where(_JOBS.batch_id == _BATCHES.id, _JOBS.status == QUEUED),
    )
    stopped = 0
    for batch_id, status in session.execute(query.limit(SWEEP_BATCHES)):
        code = BATCH_CANCELLED if status == CANCELLING else BATCH_EXPIRED
        stopped += stop_jobs(session, batch_id=batch_id, code=code, message=STOPPED[code])
    return stopped
