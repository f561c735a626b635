"""Accepting a job: plan it, store it, then publish its id. A job is published only once stored."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from api.services import Services
from models.db import session_scope
from models.errors import NotReady
from models.jobs import Job, create_job
from models.planning import plan_job
from models.schemas import JobCreate


def _stored_under(services: Services, *, key_id: str, idempotency_key: str) -> Job:
    with session_scope(services.engine) as session:
        query = select(Job).where(Job.key_id == key_id, Job.idempotency_key == idempotency_key)
        return session.exec(query).one()


def submit_job(
    services: Services, *, key_id: str, body: JobCreate, idempotency_key: str | None
) -> Job:
    """Store the job and publish it; a publish failure removes the job and answers 503."""
    plan = plan_job(body, services.catalogue, services.defaults)
    body = body.model_copy(update={"params": plan.params})
    job = Job(
        key_id=key_id,
        kind=body.kind,
        model=plan.spec.id,
        request=body.model_dump(mode="json", exclude={"metadata"}, exclude_none=True),
        meta=body.metadata,
        idempotency_key=idempotency_key,
        estimated_cost_usd=plan.estimated_cost_usd,
    )
    try:
        with session_scope(services.engine) as session:
            stored = create_job(session, job=job)
    except IntegrityError:  # a concurrent submit with the same Idempotency-Key won the race
        return _stored_under(services, key_id=key_id, idempotency_key=idempotency_key or "")
    if stored.id != job.id:
        return stored
    try:
        services.publisher.publish(job_id=job.id, kind=job.kind)
    except NotReady:
        with session_scope(services.engine) as session:
            session.delete(session.get(Job, job.id))
        raise
    return stored
