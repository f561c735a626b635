"""Job counts by status and the age of the oldest queued job (`GET /v1/stats`, worker metrics)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from models.db import utcnow
from models.jobs import QUEUED, STATUSES, Job, aware


class StatsPublic(BaseModel):
    """`GET /v1/stats`: the key's own jobs, and the shared queues every key's jobs wait in."""

    jobs: dict[str, int]
    oldest_queued_age_s: float | None
    #: messages waiting per Celery queue (all keys); null when Redis did not answer
    queues: dict[str, int] | None


def job_counts(session: Session, *, key_id: str) -> dict[str, int]:
    """How many of the key's jobs are in each status; every status is listed, zeros included."""
    query = (
        select(col(Job.status), func.count()).where(Job.key_id == key_id).group_by(col(Job.status))
    )
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in session.exec(query):
        counts[status] = int(count)
    return counts


def oldest_queued_age_s(
    session: Session, *, key_id: str, now: datetime | None = None
) -> float | None:
    """Seconds the key's oldest still-queued job has waited, or None when nothing waits."""
    query = select(func.min(col(Job.created_at))).where(Job.key_id == key_id, Job.status == QUEUED)
    oldest = aware(session.exec(query).one())
    if oldest is None:
        return None
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())
