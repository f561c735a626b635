"""The response cache: a request's canonical hash, and what a submit does with it.

The cache is the database's own succeeded jobs: a job with the cache on stores the sha256 of
its canonical request (`request_hash`), and a later identical request of the same key finds it
through a partial index on (key_id, request_hash, finished_at). Nothing lives elsewhere, so
the cache survives restarts of every process and needs no Redis; a job with the cache off has
no hash, adds no index entry and runs no statement of this module.

A request with no succeeded source joins an unfinished identical job instead (single flight):
it is stored queued as that job's follower (`cache_source_id` = the leader) and never published
or claimed; models/cache_flight.py ends it with its leader. A unique partial index holds at
most one leader per (key, hash), so two API processes racing on a new request cannot both
become leaders: the second insert fails and the submit is tried again (it then follows).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select
from sqlmodel import Session

from models.db import db_moment, utcnow
from models.idempotency import _normal as normal_json
from models.jobs import QUEUED, RUNNING, SUCCEEDED, Job

#: policy members that only choose the model (the resolved model is in the hash) or the cache
#: itself; every other member (e.g. moderation) changes what a job may answer, so it is hashed
NOT_HASHED_POLICY = frozenset({"tier", "max_cost_usd", "cache_ttl_s"})

HIT, MISS, COALESCED = "hit", "miss", "coalesced"


def request_hash(*, kind: str, model: str, request: dict[str, Any]) -> str:
    """sha256 of the canonical request: kind, the resolved model, the messages (`prompt` as
    the one user message it stands for), every param and the policy members that change the
    answer; sorted keys, normalised numbers, nulls dropped. Not metadata, not the deadline."""
    messages = request.get("messages") or [{"role": "user", "content": request.get("prompt")}]
    policy = {k: v for k, v in (request.get("policy") or {}).items() if k not in NOT_HASHED_POLICY}
    canonical = {
        "kind": kind,
        "model": model,
        "messages": messages,
        "params": request.get("params") or {},
        "policy": policy,
    }
    text = json.dumps(
        normal_json(canonical), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cache_ttl(request: dict[str, Any], default_s: int) -> int:
    """The job's TTL: its `policy.cache_ttl_s`, else the deployment's (0: the cache is off)."""
    ttl = (request.get("policy") or {}).get("cache_ttl_s")
    return default_s if ttl is None else ttl


_JOBS = Job.__table__.c
#: the newest job that ran this request and succeeded within the TTL (hits are never sources)
_SOURCE = (
    select(_JOBS)
    .where(
        _JOBS.key_id == bindparam("key_id"),
        _JOBS.request_hash == bindparam("request_hash"),
        _JOBS.status == SUCCEEDED,
        _JOBS.cache_source_id.is_(None),
        _JOBS.finished_at >= bindparam("since"),
    )
    .order_by(_JOBS.finished_at.desc())
    .limit(1)
)
#: the unfinished job that runs this request (uq_jobs_cache_leader: at most one)
_LEADER = (
    select(_JOBS.id)
    .where(
        _JOBS.key_id == bindparam("key_id"),
        _JOBS.request_hash == bindparam("request_hash"),
        _JOBS.status.in_([QUEUED, RUNNING]),
        _JOBS.cache_source_id.is_(None),
    )
    .limit(1)
)


def find_source(session: Session, *, key_id: str, digest: str, ttl_s: int):
    """The row of the job whose output answers this request, or None."""
    since = db_moment(session, utcnow() - timedelta(seconds=ttl_s))
    params = {"key_id": key_id, "request_hash": digest, "since": since}
    return session.execute(_SOURCE, params).first()


def find_leader(session: Session, *, key_id: str, digest: str) -> str | None:
    """The id of the unfinished job running this request of the key, or None."""
    return session.execute(_LEADER, {"key_id": key_id, "request_hash": digest}).scalar()


def copy_output(job: Job, source: Any, *, now: datetime) -> None:
    """End `job` as a hit of `source` (a job row): its output, no call, nothing spent."""
    job.status = SUCCEEDED
    job.model, job.provider = source.model, source.provider
    job.output_text, job.finish_reason = source.output_text, source.finish_reason
    job.output_data = source.output_data
    job.image_count, job.image_meta = source.image_count, source.image_meta
    job.moderation = source.moderation  # the verdicts of that output (the hash holds the mode)
    job.attempts, job.cost_usd, job.reserved_usd = 0, Decimal(0), Decimal(0)
    job.cache_source_id, job.cache_saved_usd = source.id, source.cost_usd
    job.published_at, job.finished_at = None, now


@dataclass(kw_only=True)
class Decision:
    """What the cache made of one job at submit: a hit (of `source_id`, saving `saved_usd`,
    with `held_usd` its estimate: checked against the budget, never held), a follower of
    `source_id`, or a miss that runs."""

    result: str
    source_id: str | None = None
    held_usd: Decimal = Decimal(0)


def decide(
    session: Session, job: Job, *, ttl_s: int, leaders: dict[str, str], now: datetime
) -> Decision:
    """Look the job up and make it a hit, a follower or a leader (`leaders`: the hashes
    already led by jobs of the same submit, so a batch's repeats follow its first)."""
    digest = request_hash(kind=job.kind, model=job.model, request=job.request)
    job.request_hash = digest
    source = find_source(session, key_id=job.key_id, digest=digest, ttl_s=ttl_s)
    if source is not None:
        held = job.reserved_usd
        copy_output(job, source, now=now)
        return Decision(result=HIT, source_id=source.id, held_usd=held)
    leader = leaders.get(digest) or find_leader(session, key_id=job.key_id, digest=digest)
    if leader is not None:
        job.cache_source_id, job.published_at = leader, None
        return Decision(result=COALESCED, source_id=leader)
    leaders[digest] = job.id
    return Decision(result=MISS)
