"""The worker's side of single flight: end a leader's followers right after the leader ends.

This runs only for jobs with the response cache on (a claimed job with a `request_hash`), in
its own transaction after the leader's end; the followers' webhooks are opened in it and
published on its commit (models/webhooks.py `publish_on_commit`). If it fails, or the worker
dies first, the sweeper finds the followers still waiting on a finished leader and ends them.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from models.cache_flight import (
    Resolution,
    end_overdue_followers,
    resolve_followers,
    stranded_leaders,
)
from models.db import session_scope
from models.lifecycle import mark_published

log = structlog.get_logger("genq.worker")

Publish = Callable[[str, str, float, bool], None]  # (job id, kind, countdown s, batch lane)


def end_followers(engine: Engine, leader_id: str, publish: Publish | None) -> Resolution:
    """Resolve the followers of a leader that just ended; publish the one promoted to run
    when the leader was cancelled (the sweeper publishes it if that fails)."""
    try:
        with session_scope(engine) as session:
            resolution = resolve_followers(session, leader_id=leader_id)
    except SQLAlchemyError as exc:  # a racing resolver, or the database: the sweeper retries
        log.warning("cache.followers_deferred", job_id=leader_id, error=type(exc).__name__)
        return Resolution()
    if resolution.ended:
        log.info("cache.followers_ended", job_id=leader_id, followers=len(resolution.ended))
    promoted = resolution.promoted
    if promoted is not None and publish is not None:
        log.info("cache.follower_promoted", job_id=promoted.job_id, leader=leader_id)
        try:
            publish(promoted.job_id, promoted.kind, 0, False)  # submitted jobs: never a batch's
        except Exception as exc:  # the broker is down: stored unpublished, the sweeper sends it
            log.warning("job.publish_deferred", job_id=promoted.job_id, error=type(exc).__name__)
            return resolution
        with session_scope(engine) as session:
            mark_published(session, job_ids=[promoted.job_id])
    return resolution


def end_stranded(engine: Engine) -> int:
    """The sweeper's part: followers still waiting on a finished leader (its worker died
    before ending them) are ended now; a promoted one is left unpublished, which the same
    sweep's outbox pass publishes. Followers past their deadline fail first (`timeout`): no
    worker ever claims a follower to check it. Returns how many leaders were resolved."""
    with session_scope(engine) as session:
        timed_out = end_overdue_followers(session)
    if timed_out:
        log.warning("cache.followers_timed_out", followers=len(timed_out))
    with session_scope(engine) as session:
        leaders = stranded_leaders(session)
    for leader_id in leaders:
        end_followers(engine, leader_id, publish=None)
    return len(leaders)
