"""Webhooks through real processes: `genq api`, `genq worker`, real Redis, a loopback receiver."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from standardwebhooks import Webhook

from models.db import get_engine, session_scope
from models.keys import create_key, rotate_webhook_secret
from tests.helpers import auth, wait_until
from tests.webhook_receiver import HANG, receiver


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: these tests measure processes, not the database (integration covers both)."""
    from models.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'genq.db'}"
    upgrade(url)
    return url


def hook_key(database_url: str) -> tuple[dict, str]:
    with session_scope(get_engine(database_url)) as session:
        key, secret = create_key(session, name="hooks")
    with session_scope(get_engine(database_url)) as session:
        _, whsec = rotate_webhook_secret(session, ref=key.id)
    return auth(secret), whsec


def submit(api: str, headers: dict, **extra) -> str:
    body = {"kind": "text", "prompt": "Write a haiku", **extra}
    answer = httpx.post(f"{api}/v1/jobs", json=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def finished(api: str, headers: dict, job_ids: list[str]) -> bool:
    for job_id in job_ids:
        job = httpx.get(f"{api}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if job["status"] != "succeeded":
            return False
    return True


def time_jobs(api: str, headers: dict, count: int, **extra) -> float:
    started = time.monotonic()
    ids = [submit(api, headers, **extra) for _ in range(count)]
    wait_until(lambda: finished(api, headers, ids), timeout_s=60, what="the jobs")
    return time.monotonic() - started


def test_retried_delivery_verifies_and_a_silent_receiver_slows_no_job(stack, database_url):
    # Given an API and one worker of 4 threads, deliveries allowed to loopback
    stack.env |= {
        "GENQ_WEBHOOK_ALLOW_PRIVATE": "true",
        "GENQ_WEBHOOK_RETRY_BASE_S": "0.5",
        "GENQ_OFFLINE_LATENCY_MS": "100",
    }
    api = stack.api()
    stack.worker()
    headers, whsec = hook_key(database_url)
    with receiver(500, 200) as flaky, receiver(then=HANG) as silent:
        # When a job's receiver fails the first delivery and accepts the second
        job_id = submit(api, headers, webhook_url=flaky.url)
        first, second = flaky.wait_for(2, timeout_s=30)
        # Then both carry one webhook-id and verify
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        for got in (first, second):
            assert Webhook(whsec).verify(got.body, got.headers)["data"]["id"] == job_id
        listed = httpx.get(f"{api}/v1/jobs/{job_id}/webhooks", headers=headers).json()
        assert [a["status_code"] for a in listed["data"]] == [500, 200]

        # And jobs run as fast beside 12 deliveries to a receiver that never answers (each
        # held 10 s) as without them, on a pool of 4 threads
        baseline = time_jobs(api, headers, 8)
        hung = [submit(api, headers, webhook_url=silent.url) for _ in range(12)]
        silent.wait_for(4, timeout_s=30)
        beside = time_jobs(api, headers, 8)
        assert finished(api, headers, hung)
        assert len(silent.received) >= 4
    print(f"8 jobs: {baseline:.2f} s alone, {beside:.2f} s beside 12 silent deliveries")
    assert beside < baseline + 3 and beside < 8, (baseline, beside)


def test_a_delivery_survives_its_worker_killed_mid_delivery(stack, database_url):
    # Given a receiver that holds the first delivery open, and a worker delivering it
    stack.env |= {
        "GENQ_WEBHOOK_ALLOW_PRIVATE": "true",
        "GENQ_WEBHOOK_TIMEOUT_S": "3",
        "GENQ_SWEEP_INTERVAL_S": "1",
    }
    api = stack.api()
    stack.worker("first")
    headers, whsec = hook_key(database_url)
    with receiver(HANG, then=200) as hook:
        job_id = submit(api, headers, webhook_url=hook.url)
        hook.wait_for(1, timeout_s=30)
        # When that worker is SIGKILLed mid-delivery, and a webhooks-only worker starts
        stack.procs["first"].send_signal(signal.SIGKILL)
        stack.procs["first"].wait(timeout=10)
        stack.worker("second", "-Q", "webhooks")
        # Then the delivery is made again, with the same id, and verifies
        first, again = hook.wait_for(2, timeout_s=60)
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert Webhook(whsec).verify(again.body, again.headers)["data"]["id"] == job_id
    listed = httpx.get(f"{api}/v1/jobs/{job_id}/webhooks", headers=headers).json()
    assert listed["deliveries"][0]["status"] == "delivered"
    # the killed attempt left no row: only the attempt that finished is stored
    assert [a["outcome"] for a in listed["data"]] == ["delivered"]
