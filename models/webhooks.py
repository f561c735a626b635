"""Webhook deliveries: the outbox row of each job end, its attempts, and the keys' secrets.

A job that names a webhook URL gets one delivery when it ends, opened by `open_delivery` in the
same transaction that ends it (models/jobs.py `finish_job`, worker/recording.py): the delivery
can only be published late, never lost. Its id is the `webhook-id` every attempt sends. A worker
claims a due delivery with a lease (one attempt at a time), records each attempt with what the
receiver answered, and either ends the delivery or sets when the next attempt is due. The
sweeper republishes deliveries whose message is overdue or whose attempt died with its worker,
and opens the deliveries of jobs that ended on a path that did not (`unopened_ends`).
Jobs without a webhook URL never reach this module.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Text,
    UniqueConstraint,
    bindparam,
    column,
    event,
    insert,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Field, Session, SQLModel

from models.db import db_moment, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: attempt outcomes: delivered (2xx), failed (retried later), gone (410: never again),
#: exhausted (failed and GENQ_WEBHOOK_MAX_ATTEMPTS reached)
OK, RETRY, GONE, EXHAUSTED = "delivered", "failed", "gone", "exhausted"
EVENT_BY_STATUS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
SECRET_PREFIX = "whsec_"
#: session.info entry listing the deliveries a transaction opened, for its caller to publish
OPENED = "genq.webhooks.opened"
#: a delivery whose message has not been taken this long after it was due is published again
REPUBLISH_GRACE_S = 30
SWEEP_BATCH = 200
log = structlog.get_logger("genq.webhooks")


class WebhookDelivery(SQLModel, table=True):
    """One event of one job to one URL; its id is the Standard Webhooks `webhook-id`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "event", name="uq_webhook_deliveries_job_event"),
        # partial: only deliveries still to make are in it (what the sweeper reads)
        Index(
            "ix_webhook_deliveries_pending",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    job_id: str = Field(foreign_key="jobs.id", max_length=32)
    key_id: str = Field(max_length=32)
    event: str = Field(max_length=32)
    #: the target, as the job named it (never logged, never listed: it may hold credentials)
    url: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default=PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=DateTime(timezone=True))
    #: an attempt in flight owns the delivery until then (its worker may have died)
    lease_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    claim_token: str | None = Field(default=None, max_length=32)
    #: the body, fixed at the first attempt so every retry sends the same bytes
    payload: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class WebhookAttempt(SQLModel, table=True):
    """One POST of a delivery: what came back, how long it took (no URL, no secret)."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="webhook_deliveries.id", max_length=40, index=True)
    job_id: str = Field(max_length=32, index=True)
    number: int
    outcome: str = Field(max_length=16)
    status_code: int | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    latency_ms: int
    started_at: datetime = Field(sa_type=DateTime(timezone=True))
    finished_at: datetime = Field(sa_type=DateTime(timezone=True))


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


#: Built once: these run in the transaction that ends a webhook job.
_JOB_WEBHOOK = table("jobs", column("id"), column("webhook_id"))
_MARK_JOB = (
    update(_JOB_WEBHOOK)
    .where(_JOB_WEBHOOK.c.id == bindparam("job_id"), _JOB_WEBHOOK.c.webhook_id.is_(None))
    .values(webhook_id=bindparam("delivery_id"))
)
_D = WebhookDelivery.__table__.c
_INSERT = insert(WebhookDelivery.__table__)


def open_delivery(
    session: Session, *, job_id: str, key_id: str, status: str, url: str
) -> str | None:
    """Open the delivery of a job's end in the caller's transaction (at most one per job: a
    second call opens nothing); its id is kept in `session.info` for the caller to publish."""
    delivery_id = f"msg_{uuid.uuid4().hex}"
    marked = session.execute(_MARK_JOB, {"job_id": job_id, "delivery_id": delivery_id})
    if marked.rowcount != 1:
        return None
    now = utcnow()
    session.execute(
        _INSERT,
        {
            "id": delivery_id,
            "job_id": job_id,
            "key_id": key_id,
            "event": EVENT_BY_STATUS[status],
            "url": url,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )
    session.info.setdefault(OPENED, []).append(delivery_id)
    return delivery_id


def take_opened(session: Session) -> list[str]:
    """The deliveries this session's transaction opened, taken (then empty): a caller that
    publishes them itself takes them before its commit."""
    return session.info.pop(OPENED, None) or []


#: where this process sends the deliveries a committed transaction opened (set by the worker
#: and the API at start); None: they wait for the sweeper
_sink: Callable[[list[str]], None] | None = None


def publish_on_commit(sink: Callable[[list[str]], None] | None) -> None:
    """Send the message of every delivery opened in this process once its transaction commits,
    whichever path ended the job (a finishing path needs no publishing code of its own)."""
    global _sink
    _sink = sink


@event.listens_for(OrmSession, "after_commit")
def _publish_committed(session: OrmSession) -> None:
    """One dict lookup per commit when nothing was opened (every plain job's commit): a
    session's `info` is not even created unless a delivery was opened in it."""
    info = session.__dict__.get("info")
    opened = info.pop(OPENED, None) if info else None
    if opened and _sink is not None:
        try:
            _sink(opened)
        except Exception as exc:  # the broker is down: the sweeper publishes them later
            log.warning("webhook.publish_deferred", count=len(opened), error=type(exc).__name__)


@event.listens_for(OrmSession, "after_rollback")
def _forget_rolled_back(session: OrmSession) -> None:
    info = session.__dict__.get("info")
    if info:
        info.pop(OPENED, None)


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One attempt's hold on a delivery."""

    delivery_id: str
    job_id: str
    key_id: str
    event: str
    url: str
    number: int
    token: str
    payload: str | None
    created_at: datetime


_CLAIM = (
    update(WebhookDelivery.__table__)
    .where(
        _D.id == bindparam("delivery_id"),
        _D.status == PENDING,
        _D.next_attempt_at <= bindparam("due_by"),
        or_(_D.lease_until.is_(None), _D.lease_until < bindparam("now")),
    )
    .values(
        attempts=_D.attempts + 1,
        lease_until=bindparam("lease_until"),
        claim_token=bindparam("token"),
    )
    .returning(_D.job_id, _D.key_id, _D.event, _D.url, _D.attempts, _D.payload, _D.created_at)
)


def claim_delivery(
    session: Session, *, delivery_id: str, lease_s: float, early_s: float = 1.0
) -> Claim | None:
    """Take a due delivery for one attempt; None when it is not pending, not due, or another
    attempt holds it (a duplicate message)."""
    now = utcnow()
    token = uuid.uuid4().hex
    row = session.execute(
        _CLAIM,
        {
            "delivery_id": delivery_id,
            "due_by": now + timedelta(seconds=early_s),
            "now": now,
            "lease_until": now + timedelta(seconds=lease_s),
            "token": token,
        },
    ).first()
    if row is None:
        return None
    return Claim(
        delivery_id=delivery_id,
        job_id=row.job_id,
        key_id=row.key_id,
        event=row.event,
        url=row.url,
        number=row.attempts,
        token=token,
        payload=row.payload,
        created_at=row.created_at,
    )


@dataclass(frozen=True, kw_only=True)
class AttemptResult:
    """What one POST did, as stored."""

    outcome: str
    status_code: int | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    latency_ms: int


def record_attempt(
    session: Session,
    *,
    claim: Claim,
    result: AttemptResult,
    payload: str,
    retry_in_s: float | None,
) -> bool:
    """Store the attempt and move the delivery on (delivered, given up, or due again in
    `retry_in_s`); False when the claim was lost (its lease ran out and another took it)."""
    ended = result.outcome != RETRY
    values: dict = {"lease_until": None, "claim_token": None, "payload": payload}
    if ended:
        values |= {"status": DELIVERED if result.outcome == OK else FAILED}
        values |= {"finished_at": result.finished_at}
    else:
        values["next_attempt_at"] = result.finished_at + timedelta(seconds=retry_in_s or 0)
    moved = session.execute(
        update(WebhookDelivery.__table__)
        .where(_D.id == claim.delivery_id, _D.claim_token == claim.token)
        .values(**values)
    )
    if moved.rowcount != 1:
        return False
    session.add(
        WebhookAttempt(
            delivery_id=claim.delivery_id,
            job_id=claim.job_id,
            number=claim.number,
            outcome=result.outcome,
            status_code=result.status_code,
            error=result.error,
            latency_ms=result.latency_ms,
            started_at=result.started_at,
            finished_at=result.finished_at,
        )
    )
    return True


def due_for_republish(session: Session, *, now: datetime | None = None) -> list[str]:
    """Pending deliveries whose attempt died with its worker (lease over), or whose message is
    overdue; each is marked due now so the next sweep leaves it alone for a while."""
    now = now or utcnow()
    overdue = db_moment(session, now - timedelta(seconds=REPUBLISH_GRACE_S))
    moment = db_moment(session, now)
    stuck = (_D.status == PENDING) & or_(
        _D.lease_until < moment,
        _D.lease_until.is_(None) & (_D.next_attempt_at < overdue),
    )
    ids = list(session.execute(select(_D.id).where(stuck).limit(SWEEP_BATCH)).scalars())
    if ids:
        session.execute(
            update(WebhookDelivery.__table__)
            .where(_D.id.in_(ids), stuck)
            .values(next_attempt_at=now, lease_until=None, claim_token=None)
        )
    return ids


def list_attempts(session: Session, *, job_id: str) -> list[tuple[WebhookAttempt, str]]:
    """A job's delivery attempts, oldest first, each with its delivery's event."""
    query = (
        select(WebhookAttempt, WebhookDelivery.event)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .where(WebhookAttempt.job_id == job_id)
        .order_by(WebhookAttempt.started_at, WebhookAttempt.id)
    )
    return [(row[0], row[1]) for row in session.execute(query)]


def list_deliveries(session: Session, *, job_id: str) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return list(session.execute(query).scalars())


def retry_wait_s(number: int, *, base_s: float, max_s: float) -> float:
    """Growing waits: base, 4·base, 16·base, … after attempts 1, 2, 3, …, at most `max_s`."""
    return min(base_s * 4 ** (number - 1), max_s)


def decide(status_code: int | None, *, number: int, max_attempts: int) -> str:
    """An attempt's outcome from what the receiver answered (None: no answer, refused, …)."""
    if status_code is not None and 200 <= status_code < 300:
        return OK
    if status_code == 410:
        return GONE
    return EXHAUSTED if number >= max_attempts else RETRY


def ended_without_delivery(session: Session, *, before: datetime) -> list[Row]:
    """Jobs with a webhook URL that ended (before `before`) without opening their delivery: a
    finishing path that does not call `open_delivery`. The partial index on jobs holds only
    webhook jobs not handed over yet, so this stays small."""
    jobs = table(
        "jobs",
        column("id"),
        column("key_id"),
        column("status"),
        column("webhook_url"),
        column("webhook_id"),
        column("finished_at"),
    )
    query = (
        select(jobs.c.id, jobs.c.key_id, jobs.c.status, jobs.c.webhook_url)
        .where(jobs.c.webhook_url.is_not(None), jobs.c.webhook_id.is_(None))
        .where(jobs.c.status.in_(tuple(EVENT_BY_STATUS)))
        .where(or_(jobs.c.finished_at.is_(None), jobs.c.finished_at < db_moment(session, before)))
        .limit(SWEEP_BATCH)
    )
    return list(session.execute(query))
