"""One worker process holding hundreds of model calls at once keeps every guarantee.

The mode issue 17 asks for (`genq worker --concurrency 1000`, the threads pool, the SDK's sharded
connection pools) against `genq simulator` over HTTP, shrunk to 300 threads so it fits the suite,
with 10-second calls so that a loaded machine still claims all 300 before the first call ends: a
cancel of a running job ends it cancelled with its call billed once; SIGTERM finishes every call in
flight and starts nothing new; SIGKILL loses no job and bills none twice; Flower lists the tasks
of that worker. Counts are asserted, never timings.
"""

from __future__ import annotations

import secrets
import signal

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.e2e.test_faults import attempts_by_job, count_status
from tests.e2e.test_scale import flower_get
from tests.helpers import auth, new_key, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]
THREADS = 300
JOBS = 360
RECOVERY = {"GENQ_LEASE_S": "6", "GENQ_SWEEP_INTERVAL_S": "1", "GENQ_REDISPATCH_AFTER_S": "8"}


def submit(settings, secret: str, count: int) -> list[str]:
    """`count` text jobs, 100 per `POST /v1/jobs/batch`."""
    ids: list[str] = []
    with TestClient(create_app(settings)) as client:
        for start in range(0, count, 100):
            body = {
                "jobs": [
                    {"kind": "text", "prompt": f"Slogan {i}", "params": {"max_tokens": 16}}
                    for i in range(start, min(count, start + 100))
                ]
            }
            answer = client.post("/v1/jobs/batch", json=body, headers=auth(secret))
            assert answer.status_code == 202, answer.text
            ids += [job["id"] for job in answer.json()["data"]]
    return ids


def running_ids(settings, secret: str, limit: int) -> list[str]:
    with TestClient(create_app(settings)) as client:
        page = client.get(
            "/v1/jobs", params={"status": "running", "limit": limit}, headers=auth(secret)
        )
        return [job["id"] for job in page.json()["data"]]


def in_flight(sim: str) -> int:
    return httpx.get(f"{sim}/_simulator/stats", timeout=10).json()["in_flight"]


def test_hundreds_in_flight_in_one_worker_keep_every_guarantee(stack, settings):
    # Given the simulator (10-second calls), Flower, and one worker with 300 threads over HTTP
    sim = stack.simulator("--latency-ms", "10000")
    login = f"ops:{secrets.token_urlsafe(9)}"
    flower = stack.flower(env={"GENQ_FLOWER_BASIC_AUTH": login})
    provider = {
        "GENQ_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-local",
        "OPENAI_BASE_URL": f"{sim}/v1",
        **RECOVERY,
    }
    stack.worker("w1", "--concurrency", str(THREADS), env=provider)
    # (with the collector tuned the documented way: GENQ_WORKER_GC_THRESHOLD's default)
    wait_until(lambda: '"threshold": 50000' in stack.log("w1"), what="w1's collector tuned")
    secret = new_key(settings.database_url)
    ids = submit(settings, secret, JOBS)

    # When 300 calls are in flight at once, 10 running jobs are cancelled and SIGTERM arrives
    wait_until(lambda: in_flight(sim) >= THREADS, timeout_s=90, what="300 calls in flight")
    held = count_status(settings, "running")
    assert held == THREADS
    cancelled = running_ids(settings, secret, 10)
    with TestClient(create_app(settings)) as client:
        for job_id in cancelled:
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(secret)).status_code < 300
    stack.procs["w1"].send_signal(signal.SIGTERM)
    assert stack.procs["w1"].wait(timeout=120) == 0

    # Then every call in flight finished (the cancelled ones end cancelled), nothing else started
    assert count_status(settings, "running") == 0
    assert count_status(settings, "cancelled") == len(cancelled) == 10
    assert count_status(settings, "succeeded") == THREADS - 10
    assert count_status(settings, "queued") == JOBS - THREADS

    # When a second worker takes the rest and is SIGKILLed mid-call, then a third recovers
    stack.worker("w2", "--concurrency", str(THREADS), env=provider)
    wait_until(
        lambda: count_status(settings, "running") == JOBS - THREADS, timeout_s=90, what="w2 busy"
    )
    stack.procs["w2"].send_signal(signal.SIGKILL)
    stack.procs["w2"].wait(timeout=30)
    stack.worker("w3", "--concurrency", str(THREADS), env=provider)
    wait_until(
        lambda: count_status(settings, "succeeded") == JOBS - 10,
        timeout_s=180,
        what="the killed worker's jobs to be reclaimed and finished",
    )

    # Then no job was lost or billed twice, and each job's cost is the sum of its attempts
    attempts = attempts_by_job(settings)
    assert set(attempts) == set(ids)
    for job_id, rows in attempts.items():
        kept = [a for a in rows if a.outcome in ("succeeded", "cancelled")]
        assert len(kept) == 1, (job_id, [a.outcome for a in rows])
    with TestClient(create_app(settings)) as client:
        for job_id in (*cancelled, ids[-1]):
            job = client.get(f"/v1/jobs/{job_id}", headers=auth(secret)).json()
            billed = sum(float(a.cost_usd) for a in attempts[job_id])
            assert float(job["cost_usd"]) == pytest.approx(billed) and billed > 0, job
    # And Flower shows the tasks of the 300-thread worker (job ids only, never a prompt)
    tasks = wait_until(
        lambda: [
            t
            for t in flower_get(flower, "/api/tasks", login).json().values()
            if t.get("worker", "").startswith("w1@") and t["state"] == "SUCCESS"
        ],
        what="Flower to list w1's tasks",
    )
    assert len(tasks) == THREADS
    assert {t["args"] for t in tasks} <= {f"['{i}']" for i in ids}
    assert "Slogan" not in str(tasks)
