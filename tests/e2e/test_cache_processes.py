"""The response cache across real processes: two API processes racing on one request, a real
worker, and an API restart (the cache lives in the database)."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlmodel import func, select

from models.attempts import Attempt
from models.db import get_engine, session_scope
from tests.helpers import auth, new_key, wait_until

pytestmark = pytest.mark.e2e
JOB = {
    "kind": "text",
    "prompt": "Write a haiku about caches",
    "params": {"max_tokens": 16},
    "policy": {"cache_ttl_s": 3600},
}


def calls_made(database_url: str, ids: list[str]) -> int:
    with session_scope(get_engine(database_url)) as session:
        query = select(func.count()).select_from(Attempt).where(Attempt.job_id.in_(ids))
        return session.exec(query).one()


def test_one_call_for_twenty_racing_submits_and_hits_after_an_api_restart(stack, settings):
    # Given two API processes on one port and a worker
    stack.worker(env={"GENQ_OFFLINE_LATENCY_MS": "300"})
    api = stack.api("--workers", "2")
    key = auth(new_key(settings.database_url))
    barrier = threading.Barrier(20)

    def send(_):
        with httpx.Client(base_url=api, headers=key, timeout=30) as client:  # own connections
            barrier.wait()
            return client.post("/v1/jobs", json=JOB)

    # When twenty identical requests are sent at once
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))
    assert [r.status_code for r in responses] == [202] * 20
    ids = [r.json()["id"] for r in responses]
    with httpx.Client(base_url=api, headers=key, timeout=10) as client:

        def all_ended():
            jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
            return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs) else None

        jobs = wait_until(all_ended, timeout_s=60, what="the twenty jobs")
    # Then one provider call answered all twenty with the same text
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert len({j["output"]["text"] for j in jobs}) == 1
    assert calls_made(settings.database_url, ids) == 1
    leader = next(j for j in jobs if not j["cache"]["hit"])
    assert all(j["cache"]["source_job_id"] == leader["id"] for j in jobs if j is not leader)
    # When the API restarts
    stack.procs["api"].send_signal(signal.SIGTERM)
    stack.procs["api"].wait(timeout=20)
    api = stack.api()
    # Then the same request is answered at submit from the database
    with httpx.Client(base_url=api, headers=key, timeout=10) as client:
        hit = client.post("/v1/jobs", json={**JOB, "metadata": {"after": "restart"}}).json()
        metrics = client.get("/metrics").text
    assert hit["status"] == "succeeded" and hit["cost_usd"] == 0
    assert hit["cache"]["source_job_id"] == leader["id"] and hit["output"] == leader["output"]
    assert 'genq_cache_requests_total{result="hit"} 1.0' in metrics
