"""Fault runs with real worker processes, Redis and PostgreSQL, asserting counts (not timings).

- a worker SIGKILLed mid-run: every job still succeeds once, and is billed once;
- a provider answering 30% 429 (Retry-After: 1 s) and 10% 503: every job succeeds, and no retry
  comes earlier than the Retry-After asked for.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from datetime import UTC
from itertools import pairwise

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from api.main import create_app
from models.attempts import Attempt
from models.db import get_engine, session_scope
from models.jobs import Job
from tests.helpers import auth, new_key, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]
#: short leases and sweeps so a dead worker's jobs come back within seconds
FAST_RECOVERY = {
    "GENQ_LEASE_S": "6",
    "GENQ_SWEEP_INTERVAL_S": "1",
    "GENQ_REDISPATCH_AFTER_S": "8",
    "GENQ_OFFLINE_LATENCY_MS": "100",
}


def submit_many(settings, count: int) -> list[str]:
    secret = new_key(settings.database_url)
    with TestClient(create_app(settings)) as client:
        return [
            client.post(
                "/v1/jobs",
                json={"kind": "text", "prompt": f"job {i}", "params": {"max_tokens": 20}},
                headers=auth(secret),
            ).json()["id"]
            for i in range(count)
        ]


def count_status(settings, status: str) -> int:
    with session_scope(get_engine(settings.database_url)) as session:
        return session.exec(select(func.count()).select_from(Job).where(Job.status == status)).one()


def attempts_by_job(settings) -> dict[str, list[Attempt]]:
    with session_scope(get_engine(settings.database_url)) as session:
        rows = session.exec(select(Attempt).order_by(Attempt.job_id, Attempt.number)).all()
    grouped: dict[str, list[Attempt]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(row)
    return grouped


def test_a_killed_worker_loses_no_job_and_bills_none_twice(stack, settings):
    # Given two workers sharing 300 jobs
    stack.worker("w1", env=FAST_RECOVERY)
    stack.worker("w2", env=FAST_RECOVERY)
    ids = submit_many(settings, 300)
    # When one is SIGKILLed mid-run
    wait_until(
        lambda: count_status(settings, "succeeded") >= 60, timeout_s=120, what="60 jobs done"
    )
    os.kill(stack.procs["w1"].pid, signal.SIGKILL)
    killed_at = count_status(settings, "succeeded")
    # Then all 300 succeed, each with exactly one successful provider call
    wait_until(
        lambda: count_status(settings, "succeeded") == 300,
        timeout_s=240,
        what="all 300 jobs to succeed after the kill",
    )
    assert killed_at < 300, "the kill came too late to test anything"
    attempts = attempts_by_job(settings)
    assert set(attempts) == set(ids)
    successes = Counter(
        a.job_id for rows in attempts.values() for a in rows if a.outcome == "succeeded"
    )
    assert set(successes.values()) == {1}
    with session_scope(get_engine(settings.database_url)) as session:
        for job in session.exec(select(Job)):
            assert job.cost_usd == sum(a.cost_usd for a in attempts[job.id])
            assert job.attempts == len(attempts[job.id])
    assert "sweeper.redispatched" in stack.log("w2")


def test_rate_limits_and_outages_slow_jobs_down_but_fail_none(stack, settings):
    faults = {
        "GENQ_OFFLINE_FAULTS": "429:0.3,503:0.1",
        "GENQ_MAX_ATTEMPTS": "15",
        "GENQ_RETRY_INITIAL_S": "0.05",
        "GENQ_RETRY_MAX_S": "0.2",
        "GENQ_OFFLINE_LATENCY_MS": "10",
    }
    stack.worker("w1", env=faults)
    ids = submit_many(settings, 40)
    wait_until(
        lambda: count_status(settings, "succeeded") + count_status(settings, "failed") == 40,
        timeout_s=240,
        what="40 jobs to finish",
    )
    assert count_status(settings, "succeeded") == 40
    attempts = attempts_by_job(settings)
    statuses = Counter(a.http_status for rows in attempts.values() for a in rows)
    assert statuses[429] > 0 and statuses[503] > 0  # the faults really happened
    for job_id in ids:
        rows = attempts[job_id]
        for before, after in pairwise(rows):
            if before.http_status == 429:  # the simulator asked for Retry-After: 1
                gap = (
                    after.started_at.replace(tzinfo=UTC) - before.finished_at.replace(tzinfo=UTC)
                ).total_seconds()
                assert gap >= 0.95, f"{job_id}: retried {gap:.2f}s after a 429 asking for 1s"
