"""What a webhook says: the event body, its Standard Webhooks signature, and the public view of
a job's delivery attempts (`GET /v1/jobs/{id}/webhooks`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlmodel import Session
from standardwebhooks import Webhook

from models.attempts import attempt_public, list_attempts
from models.jobs import aware, get_job, job_public
from models.jsontext import model_json
from models.webhooks import Claim, WebhookAttempt, WebhookDelivery

USER_AGENT = "genq-webhooks/1"


def event_body(session: Session, claim: Claim) -> str:
    """`{"type", "timestamp", "data": <the job as GET /v1/jobs/{id} returns it>}`, money in
    plain digits; `timestamp` is when the delivery was opened (the job's end)."""
    job = job_public(get_job(session, job_id=claim.job_id))
    job.attempt_log = [attempt_public(a) for a in list_attempts(session, job_id=claim.job_id)]
    stamp = aware(claim.created_at).astimezone(UTC).isoformat().replace("+00:00", "Z")
    head = json.dumps({"type": claim.event, "timestamp": stamp}, separators=(",", ":"))
    return head[:-1] + ',"data":' + model_json(job) + "}"


def signed_headers(*, secret: str, webhook_id: str, body: str, now: datetime) -> dict[str, str]:
    """The headers of one attempt: the same id every time, this attempt's time, and the
    signature of `id.timestamp.body` with the key's secret (`v1,<base64 HMAC-SHA256>`)."""
    moment = now.replace(microsecond=0)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, moment, body),
    }


class WebhookAttemptPublic(BaseModel):
    """One POST of a job's webhook: what the receiver answered (no URL, no secret)."""

    webhook_id: str
    type: str
    attempt: int
    outcome: str
    status_code: int | None
    error: str | None
    latency_ms: int
    started_at: str
    finished_at: str


class WebhookDeliveryPublic(BaseModel):
    """A job end's delivery as a whole: its state and when it is tried next."""

    webhook_id: str
    type: str
    status: str
    attempts: int
    host: str
    next_attempt_at: str | None
    finished_at: str | None


class WebhookAttemptList(BaseModel):
    data: list[WebhookAttemptPublic]
    deliveries: list[WebhookDeliveryPublic]


def attempt_view(attempt: WebhookAttempt, event: str) -> WebhookAttemptPublic:
    return WebhookAttemptPublic(
        webhook_id=attempt.delivery_id,
        type=event,
        attempt=attempt.number,
        outcome=attempt.outcome,
        status_code=attempt.status_code,
        error=attempt.error,
        latency_ms=attempt.latency_ms,
        started_at=aware(attempt.started_at).isoformat(),
        finished_at=aware(attempt.finished_at).isoformat(),
    )


def delivery_view(delivery: WebhookDelivery, host: str) -> WebhookDeliveryPublic:
    pending = delivery.status == "pending"
    return WebhookDeliveryPublic(
        webhook_id=delivery.id,
        type=delivery.event,
        status=delivery.status,
        attempts=delivery.attempts,
        host=host,
        next_attempt_at=aware(delivery.next_attempt_at).isoformat() if pending else None,
        finished_at=aware(delivery.finished_at).isoformat() if delivery.finished_at else None,
    )
