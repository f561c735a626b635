"""`POST /v1/jobs/{id}/cancel`: queued jobs never run; running ones stop at the next safe point.

A batch's job cancelled here may be the batch's last unfinished one: then the batch's finalize
is queued at once (by task name, as a worker queues it after a batch job's end), not left to
the sweeper's next pass."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.cache import after_cancel, publish_promoted
from api.deps import KeyDep, ServicesDep
from api.openapi import cancel_problems
from api.responses import model_response
from models.batch_run import has_unfinished_jobs
from models.db import session_scope
from models.jobs import CANCELLED, job_public
from models.lifecycle import cancel_job
from models.schemas import JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses=cancel_problems("The job already finished; only queued or running jobs cancel."),
)
def cancel(job_id: str, key: KeyDep, services: ServicesDep) -> Response:
    """200 with the job (`cancelled`, or still `running` with the stop requested); 409 if done."""
    with session_scope(services.engine) as session:
        job = cancel_job(session, job_id=job_id, key_id=key.id)
        promoted = after_cancel(session, job)  # a cached request's leader: hand on
        public = job_public(job)
        batch_done = (
            job.batch_id is not None
            and job.status == CANCELLED
            and not has_unfinished_jobs(session, batch_id=job.batch_id)
        )
    publish_promoted(services, promoted)
    if batch_done:
        services.publisher.queue_finalize(job.batch_id)
    return model_response(public)
