"""Accepting jobs: plan them, reserve their budget, store them, then publish their ids.

A job is published only once stored. Its worst-case cost is reserved in the same transaction
that stores it, so a budget can never be overspent by concurrent submits. If the broker is
down the job stays stored and unpublished; the workers' sweeper publishes it later. A batch is
the same with several jobs: planned, reserved and stored together, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.cache import answer, cache_ttls, count, open_hit_webhooks, runnable
from api.services import Services
from models.budgets import reserve
from models.db import session_scope
from models.errors import InvalidRequest, NotReady
from models.idempotency import replay, request_fingerprint
from models.jobs import Job, job_from_plan, store_job_alone, store_jobs
from models.keys import ApiKey
from models.lifecycle import unpublish
from models.moderation import resolve_mode, with_mode
from models.planning import Plan, plan_job
from models.schemas import JobCreate
from models.webhook_urls import UrlRefused, check_url

log = structlog.get_logger("genq.api")


@dataclass(frozen=True, kw_only=True)
class _Idempotency:
    """A request's Idempotency-Key: as the client sent it, as stored per job, and what it was
    sent with."""

    name: str
    keys: list[str]
    fingerprint: str


#: runs first in the transaction that stores the jobs (a conversation claims its turn there)
BeforeStore = Callable[[Session, list[Job]], None]


def submit_job(
    services: Services,
    *,
    key: ApiKey,
    body: JobCreate,
    idempotency_key: str | None,
    before_store: BeforeStore | None = None,
    fingerprint: str | None = None,
) -> Job:
    """One job, stored under the request's Idempotency-Key as it is (with `fingerprint`, the
    caller's fingerprint of what the client sent, else the body's)."""
    idempotency = None
    if idempotency_key:
        idempotency = _Idempotency(
            name=idempotency_key,
            keys=[idempotency_key],
            fingerprint=fingerprint or request_fingerprint(body),
        )
    return _submit(
        services, key=key, bodies=[body], idempotency=idempotency, before_store=before_store
    )[0]


def submit_batch(
    services: Services, *, key: ApiKey, bodies: list[JobCreate], idempotency_key: str | None
) -> list[Job]:
    """Several jobs in one transaction; job i is stored under the Idempotency-Key `K#i`, each
    with the fingerprint of the whole batch."""
    idempotency = None
    if idempotency_key:
        idempotency = _Idempotency(
            name=idempotency_key,
            keys=[f"{idempotency_key}#{i}" for i in range(len(bodies))],
            fingerprint=request_fingerprint(bodies),
        )
    return _submit(services, key=key, bodies=bodies, idempotency=idempotency, in_batch=True)


def _submit(
    services: Services,
    *,
    key: ApiKey,
    bodies: list[JobCreate],
    idempotency: _Idempotency | None,
    in_batch: bool = False,
    before_store: BeforeStore | None = None,
) -> list[Job]:
    """Store the jobs (reserving their budget), then publish them; a failed publish leaves the
    rest stored and unpublished for the sweeper. A replayed Idempotency-Key returns the first
    jobs (nothing stored or published); one used for another request raises a conflict.

    With the response cache on (api/cache.py), a job may be answered at once or follow an
    identical unfinished job; losing the race to lead a request stores nothing and tries
    again (it then follows the winner)."""
    plans = [
        _plan(services, body, index if in_batch else None) for index, body in enumerate(bodies)
    ]
    _check_webhooks(services, key, bodies)
    for tries_left in reversed(range(_STORE_TRIES)):
        jobs = _jobs(services, key, bodies, plans, idempotency)
        ttls = cache_ttls(services, jobs)  # None when the cache is off: nothing else runs
        try:
            first, decisions = _store(services, key, jobs, ttls, idempotency, before_store)
        except IntegrityError:  # a concurrent submit with the same Idempotency-Key won the race
            if idempotency:
                with session_scope(services.engine) as session:
                    if first := _replay(session, key, idempotency):
                        return first
            if not (ttls and tries_left):  # or one that leads the same request (cache)
                raise
            log.info("cache.leader_taken", tries_left=tries_left)  # it follows the winner now
            continue
        if first:
            return first
        if decisions:
            count(decisions)
        _publish(services, runnable(jobs) if decisions else jobs)
        return jobs
    raise AssertionError("unreachable")  # the last try returns or raises


def _store(
    services: Services,
    key: ApiKey,
    jobs: list[Job],
    ttls: list[int] | None,
    idempotency: _Idempotency | None,
    before_store: BeforeStore | None,
) -> tuple[list[Job], list | None]:
    """One transaction: the replayed first jobs (then nothing else), or the jobs stored with
    their budget reserved and, with the cache on, its decisions (a hit's webhook is opened
    here and published on the commit)."""
    if _insert_only(key, jobs, ttls, idempotency, before_store):
        store_job_alone(services.engine, jobs[0])
        return [], None
    with session_scope(services.engine) as session:
        if idempotency and (first := _replay(session, key, idempotency)):
            return first, None
        if before_store is not None:
            before_store(session, jobs)
        decisions = ttls and answer(session, key=key, jobs=jobs, ttls=ttls)
        store_jobs(session, jobs)
        reserve(session, key=key, amount=sum(job.reserved_usd for job in jobs))
        if decisions:
            open_hit_webhooks(session, jobs)
    return [], decisions or None


def _insert_only(
    key: ApiKey,
    jobs: list[Job],
    ttls: list[int] | None,
    idempotency: _Idempotency | None,
    before_store: BeforeStore | None,
) -> bool:
    """Whether storing is the one job's INSERT and nothing else: no Idempotency-Key to look
    up, no turn to claim, no cache decision, no budget to reserve (a key without one
    reserves nothing)."""
    return (
        len(jobs) == 1
        and idempotency is None
        and before_store is None
        and not ttls
        and key.budget_usd is None
    )


def _check_webhooks(services: Services, key: ApiKey, bodies: list[JobCreate]) -> None:
    for body in bodies:
        if body.webhook_url is not None or key.webhook_url is not None:
            _check_webhook(services, key, body)


#: a submit that lost the race to lead a cached request tries again this often in all
_STORE_TRIES = 3


def _jobs(
    services: Services,
    key: ApiKey,
    bodies: list[JobCreate],
    plans: list[Plan],
    idempotency: _Idempotency | None,
) -> list[Job]:
    default = services.settings.moderation
    return [
        job_from_plan(
            key_id=key.id,
            body=with_mode(body, resolve_mode(body.policy.moderation, key.moderation, default)),
            plan=plan,
            idempotency_key=idempotency.keys[index] if idempotency else None,
            idempotency_fingerprint=idempotency.fingerprint if idempotency else None,
            deadline_s=services.defaults.deadline_s,
            webhook_url=key.webhook_url,
        )
        for index, (body, plan) in enumerate(zip(bodies, plans, strict=True))
    ]


def _check_webhook(services: Services, key: ApiKey, body: JobCreate) -> None:
    """A job with a webhook needs its key's signing secret, and its own URL must point at a
    public address (the key's default was checked when it was set); 422 naming the reason."""
    if key.webhook_secret is None:
        raise InvalidRequest(
            f"key {key.id} has no webhook signing secret: create one with "
            f"`genq keys webhook-secret {key.id}`, then submit again",
            errors=[{"loc": ["body", "webhook_url"], "msg": "the key has no webhook secret"}],
        )
    if body.webhook_url is not None:
        try:
            check_url(body.webhook_url, allow_private=services.settings.webhook_allow_private)
        except UrlRefused as exc:
            raise UrlRefused(
                exc.detail, errors=[{"loc": ["body", "webhook_url"], "msg": exc.detail}]
            ) from None


def _replay(session: Session, key: ApiKey, idempotency: _Idempotency) -> list[Job]:
    return replay(
        session,
        key_id=key.id,
        keys=idempotency.keys,
        fingerprint=idempotency.fingerprint,
        name=idempotency.name,
    )


def _plan(services: Services, body: JobCreate, index: int | None) -> Plan:
    """The cost policy's plan; in a batch, its refusal names the job as validation does
    (`jobs.3: …`)."""
    try:
        return plan_job(body, services.catalogue, services.defaults)
    except InvalidRequest as exc:
        if index is None:
            raise
        errors = [
            {**error, "loc": ["body", "jobs", index, *error.get("loc", ["body"])[1:]]}
            for error in exc.errors or []
        ]
        raise InvalidRequest(f"jobs.{index}: {exc.detail}", errors=errors or None) from exc


def _publish(services: Services, jobs: list[Job]) -> None:
    for index, job in enumerate(jobs):
        try:
            services.publisher.publish(job_id=job.id, kind=job.kind)
        except NotReady:
            # The jobs are stored: leave them to the sweeper (transactional outbox), never lose
            # one; the broker just failed, so the rest are not tried now.
            with session_scope(services.engine) as session:
                for waiting in jobs[index:]:
                    log.warning("job.publish_deferred", job_id=waiting.id)
                    unpublish(session, job_id=waiting.id)
            return
