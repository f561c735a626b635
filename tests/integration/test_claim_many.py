"""Grouped claims on a real database (SQLite and PostgreSQL): one statement claims exactly the
jobs that are queued, as a lone claim would, and a burst of deliveries through one worker's
ClaimGroups (worker/claims.py) claims each job once, in fewer statements than jobs."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest

from models.db import make_engine, session_scope, utcnow
from models.jobs import QUEUED, RUNNING, SUCCEEDED, Job, aware, claim_job, claim_many
from models.keys import create_key
from tests.helpers import text_job_row
from worker.claims import ClaimGroups


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _jobs(engine, count: int, **fields) -> list[str]:
    with session_scope(engine) as session:
        key, _ = create_key(session, name="claims", budget_usd=Decimal("5"))
        jobs = [text_job_row(key.id, **fields) for _ in range(count)]
        session.add_all(jobs)
    return [job.id for job in jobs]


def test_one_statement_claims_exactly_the_queued_jobs_as_a_lone_claim_would(engine):
    queued = _jobs(engine, 3)
    running, finished, alone = _jobs(engine, 3)
    follower = _jobs(engine, 1, cache_source_id=queued[0])[0]
    with session_scope(engine) as session:
        assert claim_job(session, job_id=running, worker="other", lease_s=60)
        session.get(Job, finished).status = SUCCEEDED
    before = utcnow()

    rows = claim_many(
        engine,
        job_ids=[*queued, running, finished, follower, "no-such-job"],
        worker="w",
        lease_s=60,
    )

    assert sorted(rows) == sorted(queued)
    assert len({row.claim_token for row in rows.values()}) == 1  # one claim of three jobs
    with session_scope(engine) as session:
        lone = claim_job(session, job_id=alone, worker="w", lease_s=60)
    for job_id, row in rows.items():
        assert row.id == job_id
        assert row._fields == lone._fields
        for name in row._fields:
            if name not in {"id", "claim_token", "key_id", "deadline_at"}:
                assert getattr(row, name) == getattr(lone, name), name
    with session_scope(engine) as session:
        for job_id in queued:
            job = session.get(Job, job_id)
            assert (job.status, job.worker, job.claim_token) == (
                RUNNING,
                "w",
                rows[job_id].claim_token,
            )
            assert aware(job.started_at) >= before - timedelta(seconds=1)
            assert aware(job.lease_until) == aware(job.started_at) + timedelta(seconds=60)
        assert session.get(Job, running).worker == "other"
        assert session.get(Job, finished).status == SUCCEEDED
        assert session.get(Job, follower).status == QUEUED  # its leader's output ends it
    assert claim_many(engine, job_ids=queued, worker="w", lease_s=60) == {}


def test_a_burst_of_deliveries_claims_each_job_once_in_fewer_statements(engine):
    """Forty jobs, each delivered twice at once (a redelivery racing the first): forty claims
    won, forty skipped, and the claims made while one ran were grouped."""
    job_ids = _jobs(engine, 40)
    sizes: list[int] = []

    def slow_claim_many(engine, *, job_ids, worker, lease_s):
        sizes.append(len(job_ids))
        if len(sizes) == 1:
            time.sleep(0.2)  # the rest of the burst arrives while this claim runs
        return claim_many(engine, job_ids=job_ids, worker=worker, lease_s=lease_s)

    groups = ClaimGroups(engine, lease_s=60, claim=slow_claim_many)
    got: list[tuple[str, object]] = []
    start = threading.Barrier(80)

    def deliver(job_id: str) -> None:
        start.wait()
        got.append((job_id, groups.claim(job_id, "w")))

    threads = [threading.Thread(target=deliver, args=(j,)) for j in job_ids + job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    won = [job_id for job_id, row in got if row is not None]
    assert sorted(won) == sorted(job_ids)  # each exactly once
    assert sum(row is None for _, row in got) == 40
    assert all(row.id == job_id for job_id, row in got if row is not None)
    assert len(sizes) < 40 and max(sizes) > 1
    with session_scope(engine) as session:
        assert {session.get(Job, j).status for j in job_ids} == {RUNNING}
