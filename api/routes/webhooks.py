"""`GET /v1/jobs/{id}/webhooks`: every delivery attempt of a job's webhook, oldest first."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import KeyDep, SessionDep
from api.openapi import KEYED, problem_responses
from api.responses import model_response
from models.jobs import get_job
from models.webhook_events import WebhookAttemptList, attempt_view, delivery_view
from models.webhook_urls import host_of
from models.webhooks import list_attempts, list_deliveries

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}/webhooks",
    response_model=WebhookAttemptList,
    responses=problem_responses(*KEYED, 404),
)
def webhooks(job_id: str, key: KeyDep, session: SessionDep) -> Response:
    """The job's webhook attempts (status code, error, latency) and each delivery's state."""
    get_job(session, job_id=job_id, key_id=key.id)
    attempts = [attempt_view(a, event) for a, event in list_attempts(session, job_id=job_id)]
    deliveries = [delivery_view(d, host_of(d.url)) for d in list_deliveries(session, job_id=job_id)]
    return model_response(WebhookAttemptList(data=attempts, deliveries=deliveries))
