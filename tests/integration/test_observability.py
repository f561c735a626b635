"""Worker metrics, queue depth, `GET /v1/stats` and request ids, with real Redis and databases."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry

from api.enqueue import Publisher
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.errors import PermanentProviderError, RetryableProviderError
from models.jobs import Job
from models.keys import create_key
from models.pricing import Usage
from tests.helpers import FakeProvider, auth, free_port, new_key
from worker import metrics
from worker.observe import run_observed
from worker.retry import RetryPolicy
from worker.runner import Runner


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def queued_job(database_url: str, model: str = "gpt-4o-mini") -> str:
    with session_scope(get_engine(database_url)) as session:
        key, _ = create_key(session, name="metrics")
        job = Job(key_id=key.id, kind="text", model=model, request={"kind": "text", "prompt": "hi"})
        session.add(job)
    return job.id


def run(database_url: str, job_id: str, provider: FakeProvider) -> str:
    """Run the job as the Celery task does: through `run_observed`, with a task-like object."""
    runner = Runner(
        engine=get_engine(database_url),
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=3, initial_s=0, max_s=0),
        sleep=lambda _s: None,
    )
    task = SimpleNamespace(
        name="genq.generate_text", request=SimpleNamespace(id="t1", hostname="w1", headers=None)
    )
    return run_observed(task, job_id, runner)


def test_a_retried_job_counts_its_retry_tokens_cost_and_end(database_url, tiktoken_dir):
    # Given a job whose first call is rate limited and whose second succeeds
    model = "gpt-4o-mini"
    job_id = queued_job(database_url, model)
    limited = RetryableProviderError("slow down", status_code=429, kind="rate_limited")
    usage = Usage(prompt_tokens=100, completion_tokens=50)
    watched = {
        ("genq_retries_total", ("model", model), ("reason", "rate_limited")): 1,
        ("genq_jobs_total", ("kind", "text"), ("model", model), ("status", "succeeded")): 1,
        ("genq_tokens_total", ("model", model), ("type", "prompt")): 100,
        ("genq_tokens_total", ("model", model), ("type", "completion")): 50,
        ("genq_cost_usd_total", ("model", model)): float(
            (100 * Decimal("0.15") + 50 * Decimal("0.60")) / 10**6
        ),
        (
            "genq_attempt_duration_seconds_count",
            ("kind", "text"),
            ("model", model),
            ("outcome", "retryable_error"),
        ): 1,
    }
    before = {key: sample(key[0], **dict(key[1:])) for key in watched}
    # When it runs
    assert run(database_url, job_id, FakeProvider(outcomes=[limited], usage=usage)) == "succeeded"
    # Then every counter moved by exactly what the attempts recorded
    for key, delta in watched.items():
        assert sample(key[0], **dict(key[1:])) == pytest.approx(before[key] + delta, abs=1e-12), key


def test_a_failed_job_is_counted_as_failed_and_a_duplicate_as_skipped(database_url, tiktoken_dir):
    job_id = queued_job(database_url, "gpt-4o-mini")
    failed = {"kind": "text", "model": "gpt-4o-mini", "status": "failed"}
    skipped = {"task": "genq.generate_text", "outcome": "skipped"}
    before = sample("genq_jobs_total", **failed), sample("genq_task_deliveries_total", **skipped)
    provider = FakeProvider(outcomes=[PermanentProviderError("bad prompt", status_code=400)])
    assert run(database_url, job_id, provider) == "failed"
    assert run(database_url, job_id, provider) == "skipped"
    assert sample("genq_jobs_total", **failed) == before[0] + 1
    assert sample("genq_task_deliveries_total", **skipped) == before[1] + 1


def test_rate_limit_waits_are_observed():
    before = sample("genq_rate_limit_wait_seconds_count", model="gpt-4o")
    metrics.observe_rate_limit_wait("gpt-4o", 0.3)
    assert sample("genq_rate_limit_wait_seconds_count", model="gpt-4o") == before + 1


def test_queue_depth_is_read_from_redis(clean_redis):
    # Given three text and one image message waiting in Redis
    publisher = Publisher(clean_redis)
    for i in range(3):
        publisher.publish(job_id=f"t{i}", kind="text")
    publisher.publish(job_id="i0", kind="image")
    publisher.close()
    # When the collector is read
    registry = CollectorRegistry()
    registry.register(metrics.QueueCollector(clean_redis, lambda: 12.5))
    # Then it reports the depth per queue, that Redis answered, and the oldest age
    assert registry.get_sample_value("genq_queue_depth", {"queue": "text"}) == 3
    assert registry.get_sample_value("genq_queue_depth", {"queue": "images"}) == 1
    assert registry.get_sample_value("genq_broker_up") == 1
    assert registry.get_sample_value("genq_oldest_queued_job_age_seconds") == 12.5


def test_queue_depth_says_when_redis_is_down():
    registry = CollectorRegistry()
    registry.register(metrics.QueueCollector(f"redis://127.0.0.1:{free_port()}/0"))
    assert registry.get_sample_value("genq_broker_up") == 0
    assert registry.get_sample_value("genq_queue_depth", {"queue": "text"}) is None


def test_the_metrics_endpoint_serves_over_http(settings):
    registry = CollectorRegistry()
    registry.register(metrics.JOBS)
    port = metrics.serve(
        port=free_port(), host="127.0.0.1", redis_url=settings.redis_url, registry=registry
    )
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'genq_queue_depth{queue="text"} 0.0' in body and "genq_broker_up 1.0" in body


# -- the API ----------------------------------------------------------------------------------


def test_stats_show_own_jobs_oldest_queued_age_and_queue_depth(client, settings):
    # Given two queued jobs of one key and one of another key
    mine, theirs = auth(new_key(settings.database_url)), auth(new_key(settings.database_url))
    for headers in (mine, mine, theirs):
        response = client.post("/v1/jobs", json={"kind": "text", "prompt": "x"}, headers=headers)
        assert response.status_code == 202
    # When the first key asks for its stats
    body = client.get("/v1/stats", headers=mine).json()
    # Then it sees its own counts, a non-negative age, and the shared queue depth
    assert body["jobs"] == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert body["oldest_queued_age_s"] >= 0
    assert body["queues"] == {
        "text": 3,
        "images": 0,
        "text.batch": 0,
        "images.batch": 0,
        "webhooks": 0,
    }
    assert client.get("/v1/stats").status_code == 401


def test_stats_of_a_key_with_nothing_queued(client, settings):
    body = client.get("/v1/stats", headers=auth(new_key(settings.database_url))).json()
    assert body["oldest_queued_age_s"] is None and sum(body["jobs"].values()) == 0


def test_request_id_is_echoed_and_sent_as_a_message_header(client, settings):
    key = auth(new_key(settings.database_url))
    # A sane incoming id is kept and returned; the message carries it as a header, not an argument
    response = client.post(
        "/v1/jobs",
        json={"kind": "text", "prompt": "x"},
        headers={**key, "X-Request-ID": "trace-42"},
    )
    assert response.headers["x-request-id"] == "trace-42"
    [raw] = redis.Redis.from_url(settings.redis_url).lrange("text", 0, -1)
    message = json.loads(raw)
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert message["headers"]["genq_request_id"] == "trace-42"
    assert args == [response.json()["id"]] and kwargs == {}
    # A request without one, or with a strange one, gets a fresh id
    made = client.get("/healthz", headers={"X-Request-ID": "bad id"}).headers["x-request-id"]
    assert made != "bad id" and len(made) == 32
    assert client.get("/healthz").headers["x-request-id"] != made
