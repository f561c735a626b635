"""Accepting jobs: plan them, reserve their budget, store them, then publish their ids.

A job is published only once stored. Its worst-case cost is reserved in the same transaction
that stores it, so a budget can never be overspent by concurrent submits. If the broker is
down the job stays stored and unpublished; the workers' sweeper publishes it later. A batch is
the same with several jobs: planned, reserved and stored together, or not at all.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError

from api.services import Services
from models.budgets import reserve
from models.db import session_scope
from models.errors import InvalidRequest, NotReady
from models.jobs import Job, find_by_idempotency_keys, job_from_plan
from models.keys import ApiKey
from models.lifecycle import unpublish
from models.planning import Plan, plan_job
from models.schemas import JobCreate

log = structlog.get_logger("genq.api")


def submit_job(
    services: Services, *, key: ApiKey, body: JobCreate, idempotency_key: str | None
) -> Job:
    """One job, stored under the request's Idempotency-Key as it is."""
    keys = [idempotency_key] if idempotency_key else None
    return _submit(services, key=key, bodies=[body], idempotency_keys=keys)[0]


def submit_batch(
    services: Services, *, key: ApiKey, bodies: list[JobCreate], idempotency_key: str | None
) -> list[Job]:
    """Several jobs in one transaction; job i is stored under the Idempotency-Key `K#i`."""
    keys = [f"{idempotency_key}#{i}" for i in range(len(bodies))] if idempotency_key else None
    return _submit(services, key=key, bodies=bodies, idempotency_keys=keys, in_batch=True)


def _submit(
    services: Services,
    *,
    key: ApiKey,
    bodies: list[JobCreate],
    idempotency_keys: list[str] | None,
    in_batch: bool = False,
) -> list[Job]:
    """Store the jobs (reserving their budget), then publish them; a failed publish leaves the
    rest stored and unpublished for the sweeper."""
    jobs = [
        job_from_plan(
            key_id=key.id,
            body=body,
            plan=_plan(services, body, index if in_batch else None),
            idempotency_key=idempotency_keys[index] if idempotency_keys else None,
            deadline_s=services.defaults.deadline_s,
        )
        for index, body in enumerate(bodies)
    ]
    try:
        with session_scope(services.engine) as session:
            if idempotency_keys and (
                first := find_by_idempotency_keys(session, key_id=key.id, keys=idempotency_keys)
            ):
                return first
            session.add_all(jobs)
            reserve(session, key=key, amount=sum(job.reserved_usd for job in jobs))
    except IntegrityError:  # a concurrent submit with the same Idempotency-Key won the race
        if not idempotency_keys:
            raise
        with session_scope(services.engine) as session:
            return find_by_idempotency_keys(session, key_id=key.id, keys=idempotency_keys)
    _publish(services, jobs)
    return jobs


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
