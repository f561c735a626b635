"""Fairness: batch jobs wait behind interactive ones, with a real worker process and real Redis.

The measure is a count, not a time: how many batch jobs a worker started after an interactive
job was submitted and before that job started. With the batch lanes it is bounded by the
worker's threads (each takes the interactive job as soon as it is free); on one shared FIFO
queue it is every batch job queued ahead (the control case shows the test can fail).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import redis
from sqlmodel import select

from models.db import get_engine, session_scope
from models.jobs import Job, aware
from tests.e2e.test_offline_stack import poll
from tests.helpers import auth, new_key, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]
BATCH_JOBS = 200
THREADS = 4


def create_batch(client: httpx.Client, settings) -> list[str]:
    """A BATCH_JOBS-line batch through `/v1/files` + `/v1/batches` (no worker runs yet): its
    jobs' ids, their messages on the `text.batch` lane as the API published them."""
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 8},
            }
        )
        + "\n"
        for i in range(BATCH_JOBS)
    )
    upload = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", lines)})
    assert upload.status_code == 200, upload.text
    body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions"}
    batch = client.post("/v1/batches", json={**body, "completion_window": "24h"}).json()
    assert batch["status"] == "in_progress", batch
    assert redis.Redis.from_url(settings.redis_url).llen("text.batch") == BATCH_JOBS
    jobs = client.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 100})
    assert len(jobs.json()["data"]) == 100
    with session_scope(get_engine(settings.database_url)) as session:
        found = session.exec(select(Job.id).where(Job.batch_id == batch["id"]))
        return list(found)


def queue_batch_jobs(client: httpx.Client, settings, *, lane: bool) -> list[str]:
    """The batch's jobs: a real batch (`lane`), or as many plain jobs left on the shared `text`
    queue, through `POST /v1/jobs/batch` (the FIFO control)."""
    if lane:
        return create_batch(client, settings)
    ids: list[str] = []
    for _ in range(BATCH_JOBS // 100):
        jobs = [
            {"kind": "text", "prompt": f"line {i}", "params": {"max_tokens": 8}} for i in range(100)
        ]
        answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert answer.status_code == 202, answer.text
        ids += [job["id"] for job in answer.json()["data"]]
    return ids


def started_at(settings, ids: list[str]) -> list[datetime]:
    with session_scope(get_engine(settings.database_url)) as session:
        rows = session.exec(select(Job.started_at).where(Job.id.in_(ids)))  # type: ignore[attr-defined]
        return [aware(moment) for moment in rows if moment is not None]


def batch_jobs_started_ahead(stack, settings, *, lane: bool) -> tuple[int, int]:
    """Batch jobs started while one interactive job, submitted mid-batch, waited in Redis; and
    batch jobs started before it at all."""
    client = httpx.Client(
        base_url=stack.api(), headers=auth(new_key(settings.database_url)), timeout=30
    )
    ids = queue_batch_jobs(client, settings, lane=lane)
    stack.worker("worker", "--concurrency", str(THREADS), env={"GENQ_OFFLINE_LATENCY_MS": "40"})
    wait_until(lambda: len(started_at(settings, ids)) >= 2 * THREADS, what="the batch to run")
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": "now please"}).json()
    # its message is in Redis once the 202 is back: from then on a worker choosing a batch
    # message over it would be unfair (before, batch jobs may legitimately start)
    queued = datetime.now(UTC)
    done = poll(client, job["id"])
    assert done["status"] == "succeeded"
    began = datetime.fromisoformat(done["started_at"])
    moments = started_at(settings, ids)
    return sum(queued <= m < began for m in moments), sum(m < began for m in moments)


def test_an_interactive_job_overtakes_a_queued_batch(stack, settings):
    # Given a worker busy with a 200-line batch (/v1/batches) on its lane, When one job is
    # submitted mid-batch
    ahead, before = batch_jobs_started_ahead(stack, settings, lane=True)
    # Then at most one batch job per worker thread starts while it waits (the threads busy
    # when it arrived), and it starts while most of the batch is still waiting
    assert ahead <= THREADS, ahead
    assert before < BATCH_JOBS // 2, before


def test_control_on_one_shared_fifo_queue_the_same_job_waits_for_the_batch(stack, settings):
    # Given the same batch left on the shared interactive queue (no lane), When one job is
    # submitted mid-batch, Then it waits behind the batch jobs queued before it
    ahead, before = batch_jobs_started_ahead(stack, settings, lane=False)
    assert ahead > BATCH_JOBS // 2 and before > BATCH_JOBS // 2, (ahead, before)
