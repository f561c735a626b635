"""The response cache's step in the submit path, after the budget and before the queue.

Order of checks (README "Response cache"): budget, cache, moderation (worker), generation. A
hit is checked against the key's budget like any job (402 when its estimate does not fit),
then holds nothing and is stored succeeded, never published (its webhook is opened with it).
A follower is stored queued and reserved like any job (it may have to run if its leader is
cancelled), but never published: its leader's end resolves it (models/cache_flight.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import structlog
from prometheus_client import Counter
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from api.services import Services
from models.budgets import reserve, settle
from models.cache import Decision, cache_ttl, decide
from models.cache_flight import Promoted, resolve_followers
from models.db import session_scope, utcnow
from models.errors import NotReady
from models.jobs import CANCELLED, QUEUED, SUCCEEDED, Job, is_cache_hit
from models.keys import ApiKey
from models.lifecycle import mark_published
from models.webhooks import open_delivery

log = structlog.get_logger("genq.api")
CACHE_REQUESTS = Counter(
    "genq_cache_requests", "Submitted jobs with the response cache on, by result", ["result"]
)


def cache_ttls(services: Services, jobs: Sequence[Job]) -> list[int] | None:
    """Each job's TTL, or None when the cache is off for all of them (then nothing else of
    this module runs)."""
    default = services.settings.cache_ttl_s
    ttls = [cache_ttl(job.request, default) for job in jobs]
    return ttls if any(ttls) else None


def answer(
    session: Session, *, key: ApiKey, jobs: Sequence[Job], ttls: Sequence[int]
) -> list[Decision | None]:
    """Make each job with the cache on a hit, a follower or a leader (before they are stored);
    the hits' estimates must fit the budget, and are released at once."""
    leaders: dict[str, str] = {}
    now = utcnow()
    decisions = [
        decide(session, job, ttl_s=ttl, leaders=leaders, now=now)
        if ttl and job.conversation_id is None  # a conversation's turn always runs
        else None
        for job, ttl in zip(jobs, ttls, strict=True)
    ]
    held = sum((d.held_usd for d in decisions if d), Decimal(0))
    if held and key.budget_usd is not None:
        reserve(session, key=key, amount=held)
        settle(session, key_id=key.id, reserved=held, cost=Decimal(0))
    return decisions


def open_hit_webhooks(session: Session, jobs: Sequence[Job]) -> None:
    """A hit ends at submit: its webhook's delivery is opened in the transaction that stores it
    (and published on its commit, models/webhooks.py)."""
    hits = [job for job in jobs if job.webhook_url is not None and is_cache_hit(job)]
    if hits:
        session.flush()  # the delivery marks the stored job row
        for job in hits:
            opened = open_delivery(
                session, job_id=job.id, key_id=job.key_id, status=SUCCEEDED, url=job.webhook_url
            )
            set_committed_value(job, "webhook_id", opened)


def runnable(jobs: Sequence[Job]) -> list[Job]:
    """The jobs to publish: not the hits (finished) nor the followers (their leader runs)."""
    return [job for job in jobs if job.status == QUEUED and job.cache_source_id is None]


def count(decisions: Sequence[Decision | None]) -> None:
    """`genq_cache_requests_total{result}`, once the jobs are stored."""
    for decision in decisions:
        if decision is not None:
            CACHE_REQUESTS.labels(decision.result).inc()


def after_cancel(session: Session, job: Job) -> Promoted | None:
    """A queued leader just cancelled: one of its followers runs instead (in the cancel's
    transaction; publish it after the commit with `publish_promoted`)."""
    if job.request_hash is None or job.status != CANCELLED or job.cache_source_id is not None:
        return None
    return resolve_followers(session, leader_id=job.id).promoted


def publish_promoted(services: Services, promoted: Promoted | None) -> None:
    """Publish a promoted follower; when the broker is down the sweeper publishes it later
    (it was stored unpublished)."""
    if promoted is None:
        return
    try:
        services.publisher.publish(job_id=promoted.job_id, kind=promoted.kind)
    except NotReady:
        log.warning("job.publish_deferred", job_id=promoted.job_id)
        return
    with session_scope(services.engine) as session:
        mark_published(session, job_ids=[promoted.job_id])
