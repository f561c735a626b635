"""Accepting a job: plan it, reserve its budget, store it, then publish its id.

A job is published only once stored. Its worst-case cost is reserved in the same transaction
that stores it, so a budget can never be overspent by concurrent submits. If the broker is
down the job stays stored and unpublished; the workers' sweeper publishes it later.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError

from api.services import Services
from models.budgets import reserve
from models.db import session_scope
from models.errors import NotReady
from models.jobs import Job, find_by_idempotency_key, job_from_plan
from models.keys import ApiKey
from models.lifecycle import unpublish
from models.planning import plan_job
from models.schemas import JobCreate

log = structlog.get_logger("genq.api")


def submit_job(
    services: Services, *, key: ApiKey, body: JobCreate, idempotency_key: str | None
) -> Job:
    """Store the job (reserving its budget), then publish it; a failed publish leaves it stored
    and unpublished for the sweeper."""
    plan = plan_job(body, services.catalogue, services.defaults)
    job = job_from_plan(
        key_id=key.id,
        body=body,
        plan=plan,
        idempotency_key=idempotency_key,
        deadline_s=services.defaults.deadline_s,
    )
    try:
        with session_scope(services.engine) as session:
            if idempotency_key and (
                first := find_by_idempotency_key(session, key_id=key.id, key=idempotency_key)
            ):
                return first
            session.add(job)
            # last (it flushes the insert first): a budgeted key's row stays locked only from
            # here to the commit
            reserve(session, key=key, amount=job.reserved_usd)
    except IntegrityError:  # a concurrent submit with the same Idempotency-Key won the race
        if not idempotency_key:
            raise
        with session_scope(services.engine) as session:
            return find_by_idempotency_key(session, key_id=key.id, key=idempotency_key)
    try:
        services.publisher.publish(job_id=job.id, kind=job.kind)
    except NotReady:
        # The job is stored: leave it to the sweeper (transactional outbox), never lose it.
        log.warning("job.publish_deferred", job_id=job.id)
        with session_scope(services.engine) as session:
            unpublish(session, job_id=job.id)
    return job
