"""`GET /v1/stats`: the key's jobs by status, its oldest queued job, and queue depth."""

from __future__ import annotations

import redis
from fastapi import APIRouter

from api.deps import KeyDep, ServicesDep, SessionDep
from api.openapi import KEYED, problem_responses
from models.broker import queue_depths, redis_client
from models.stats import StatsPublic, job_counts, oldest_queued_age_s

router = APIRouter(prefix="/v1", tags=["stats"])


@router.get("/stats", response_model=StatsPublic, responses=problem_responses(*KEYED))
def stats(key: KeyDep, session: SessionDep, services: ServicesDep) -> StatsPublic:
    """Counts by status and the oldest queued age for this key; queue depths for everyone."""
    return StatsPublic(
        jobs=job_counts(session, key_id=key.id),
        oldest_queued_age_s=oldest_queued_age_s(session, key_id=key.id),
        queues=_queue_depths(services.settings.redis_url),
    )


def _queue_depths(redis_url: str) -> dict[str, int] | None:
    """Queue depths, or None when Redis does not answer (the counts above still help)."""
    client = redis_client(redis_url)
    try:
        return queue_depths(client)
    except redis.RedisError:
        return None
    finally:
        client.close()
