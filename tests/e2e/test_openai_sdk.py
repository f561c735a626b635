"""The `openai` provider through the real SDK over HTTP, against `genq simulator`."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from celery import Celery
from sqlmodel import select

from models.attempts import Attempt
from models.db import get_engine, session_scope
from models.queue import QUEUE_BY_KIND, TASK_BY_KIND
from tests.e2e.test_offline_stack import poll
from tests.helpers import auth, new_key, wait_until

pytestmark = pytest.mark.e2e
OPENAI_KEY = "sk-test-SECRET-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def sdk_stack(stack, settings):
    """Simulator + a worker using the openai provider against it + the API."""
    sim = stack.simulator("--latency-ms", "20", "--retry-after", "1")
    stack.worker(
        env={
            "GENQ_PROVIDER": "openai",
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": f"{sim}/v1",
        }
    )
    api = stack.api()
    secret = new_key(settings.database_url)
    client = httpx.Client(base_url=api, headers=auth(secret), timeout=10)
    return sim, client, secret


def attempts_of(settings, job_id: str) -> list[Attempt]:
    with session_scope(get_engine(settings.database_url)) as session:
        query = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)
        return list(session.exec(query))


def script(sim: str, *statuses: int) -> None:
    httpx.post(f"{sim}/_simulator/script", json={"statuses": list(statuses)}).raise_for_status()


def calls(sim: str) -> dict:
    return httpx.get(f"{sim}/_simulator/stats").json()["calls"]


def test_text_and_image_through_the_sdk(sdk_stack, settings, stack):
    sim, client, secret = sdk_stack
    text = client.post(
        "/v1/jobs", json={"kind": "text", "prompt": "Hello there", "params": {"max_tokens": 12}}
    ).json()
    image = client.post(
        "/v1/jobs",
        json={"kind": "image", "prompt": "fox", "model": "dall-e-3", "params": {"quality": "hd"}},
    ).json()
    done, picture = poll(client, text["id"]), poll(client, image["id"])
    assert done["status"] == "succeeded" and done["provider"] == "openai"
    assert done["output"]["text"].startswith("[synthetic]")
    assert done["usage"]["completion_tokens"] <= 12 and done["attempts"] == 1
    assert picture["status"] == "succeeded" and picture["cost_usd"] == 0.08
    png = client.get(picture["output"]["images"][0]["url"]).content
    assert png.startswith(b"\x89PNG")
    assert calls(sim) == {"chat": 1, "images": 1}
    logs = stack.all_logs()
    assert OPENAI_KEY not in logs and secret not in logs


def test_429_with_retry_after_then_success_records_two_attempts(sdk_stack, settings):
    sim, client, _ = sdk_stack
    script(sim, 429, 200)
    job = poll(client, client.post("/v1/jobs", json={"kind": "text", "prompt": "x"}).json()["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 2
    first, second = attempts_of(settings, job["id"])
    assert (first.outcome, first.http_status, first.error_type) == (
        "retryable_error",
        429,
        "rate_limited",
    )
    assert second.outcome == "succeeded" and first.cost_usd == 0
    gap = (_utc(second.started_at) - _utc(first.started_at)).total_seconds()
    assert gap >= 0.95, f"retried {gap:.2f}s after a 429 that asked for 1s"


def test_400_fails_at_once_with_the_providers_message(sdk_stack, settings):
    sim, client, _ = sdk_stack
    script(sim, 400)
    job = poll(client, client.post("/v1/jobs", json={"kind": "text", "prompt": "x"}).json()["id"])
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "simulated 400" in job["error"]["message"]
    assert [a.http_status for a in attempts_of(settings, job["id"])] == [400]


def test_duplicate_messages_do_not_call_the_model_twice(sdk_stack, settings):
    sim, client, _ = sdk_stack
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": "once"}).json()
    producer = Celery(broker=settings.redis_url, set_as_current=False)
    for _ in range(3):  # the same message delivered again, as a broker redelivery would
        producer.send_task(TASK_BY_KIND["text"], args=[job["id"]], queue=QUEUE_BY_KIND["text"])
    assert poll(client, job["id"])["status"] == "succeeded"
    wait_until(lambda: _queue_empty(settings.redis_url), what="duplicates to be consumed")
    assert calls(sim) == {"chat": 1}
    assert len(attempts_of(settings, job["id"])) == 1


def _queue_empty(redis_url: str) -> bool:
    import redis

    return redis.Redis.from_url(redis_url).llen("text") == 0


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)
