"""The response cache on real Redis and real databases: hits at submit, what they ignore and what
they do not, TTLs, images, budgets, and the cache with the broker down."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.attempts import Image
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope, utcnow
from models.jobs import Job
from models.keys import ApiKey, create_key
from tests.helpers import FakeProvider, auth, free_port, new_key
from worker.retry import RetryPolicy
from worker.runner import Runner

CACHED = {"kind": "text", "prompt": "Write a haiku", "policy": {"cache_ttl_s": 3600}}


def make_runner(settings, provider) -> Runner:
    return Runner(
        engine=get_engine(settings.database_url),
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=2, initial_s=0.01, max_s=0.02),
        sleep=lambda _s: None,
    )


def submit(client, key, body=None, **extra):
    response = client.post("/v1/jobs", json={**(body or CACHED), **extra}, headers=key)
    assert response.status_code == 202, response.text
    return response.json()


def finished_source(client, key, settings, provider, body=None) -> dict:
    """A job of `body` that ran and succeeded: the cache's source."""
    job = submit(client, key, body)
    assert job["status"] == "queued" and job["cache"]["hit"] is False
    assert make_runner(settings, provider).run(job["id"]) == "succeeded"
    return client.get(f"/v1/jobs/{job['id']}", headers=key).json()


def test_a_repeated_request_is_answered_at_submit_for_nothing(client, key, settings):
    # Given a succeeded job with the cache on
    provider = FakeProvider()
    source = finished_source(client, key, settings, provider)
    assert source["cost_usd"] > 0
    # When the same request is sent again (other metadata, other deadline)
    hit = submit(client, key, metadata={"campaign": "spring"}, deadline_s=60)
    # Then it is succeeded at once with the source's output, no attempt and no cost
    assert hit["status"] == "succeeded" and hit["output"] == source["output"]
    assert hit["attempts"] == 0 and hit["cost_usd"] == 0
    assert hit["cache"] == {
        "hit": True,
        "source_job_id": source["id"],
        "saved_usd": source["cost_usd"],
    }
    assert hit["metadata"] == {"campaign": "spring"} and hit["finished_at"]
    # and it was never queued: no provider call, no claim
    assert make_runner(settings, provider).run(hit["id"]) == "skipped"
    assert provider.calls == 1
    shown = client.get(f"/v1/jobs/{hit['id']}", headers=key).json()
    assert shown["attempt_log"] == [] and shown["cache"]["hit"] is True
    # and the usage report counts it
    total = client.get("/v1/usage", headers=key).json()["total"]
    assert (total["jobs"], total["attempts"], total["cache_hits"]) == (2, 1, 1)
    assert total["saved_usd"] == source["cost_usd"] == total["cost_usd"]


def test_the_cache_is_never_shared_across_keys(client, key, settings):
    finished_source(client, key, settings, FakeProvider())
    other = auth(new_key(settings.database_url, "other"))
    job = submit(client, other)
    assert job["status"] == "queued" and job["cache"] == {
        "hit": False,
        "source_job_id": None,
        "saved_usd": 0,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"params": {"temperature": 0.2}},
        {"params": {"seed": 7}},
        {"params": {"response_format": {"type": "json_object"}}},
        {"model": "gpt-4.1-nano"},
        {"policy": {"cache_ttl_s": 3600, "tier": "premium"}},  # another resolved model
        {"prompt": "Write a limerick"},
        {
            "kind": "text",
            "prompt": None,
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Write a haiku"},
            ],
        },
    ],
    ids=["temperature", "seed", "response_format", "model", "tier-model", "prompt", "messages"],
)
def test_a_different_param_model_or_message_is_a_miss(client, key, settings, change):
    finished_source(client, key, settings, FakeProvider())
    body = {k: v for k, v in {**CACHED, **change}.items() if v is not None}
    job = submit(client, key, body)
    assert job["status"] == "queued" and job["cache"]["hit"] is False


def test_the_same_request_spelled_differently_is_a_hit(client, key, settings):
    # `prompt` is one user message; the tier does not matter when it resolves to the same model
    source = finished_source(client, key, settings, FakeProvider())
    body = {
        "kind": "text",
        "messages": [{"role": "user", "content": "Write a haiku"}],
        "model": source["model"],
        "policy": {"cache_ttl_s": 60, "tier": "economy"},
    }
    hit = submit(client, key, body)
    assert hit["status"] == "succeeded" and hit["cache"]["source_job_id"] == source["id"]


def test_a_source_older_than_the_ttl_is_not_used(client, key, settings):
    source = finished_source(client, key, settings, FakeProvider())
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, source["id"])
        job.finished_at = utcnow() - timedelta(seconds=120)
        session.add(job)
    assert submit(client, key, policy={"cache_ttl_s": 60})["status"] == "queued"
    assert submit(client, key, policy={"cache_ttl_s": 180})["status"] == "succeeded"


def test_the_deployment_default_ttl_and_a_policy_of_zero(settings, key):
    with TestClient(create_app(settings.model_copy(update={"cache_ttl_s": 600}))) as client:
        plain = {"kind": "text", "prompt": "Write a haiku"}
        finished_source(client, key, settings, FakeProvider(), plain)
        assert submit(client, key, plain)["cache"]["hit"] is True
        off = submit(client, key, plain, policy={"cache_ttl_s": 0})
        assert off["status"] == "queued" and off["cache"] is None


def test_failed_and_cancelled_jobs_are_never_sources(client, key, settings):
    from models.errors import PermanentProviderError

    failing = FakeProvider(outcomes=[PermanentProviderError("no", kind="bad_request")])
    failed = submit(client, key)
    assert make_runner(settings, failing).run(failed["id"]) == "failed"
    cancelled = submit(client, key)
    assert client.post(f"/v1/jobs/{cancelled['id']}/cancel", headers=key).status_code == 200
    again = submit(client, key)
    assert again["status"] == "queued" and again["cache"]["source_job_id"] is None


def test_an_image_hit_serves_the_same_stored_bytes(client, key, settings):
    body = {
        "kind": "image",
        "prompt": "a red fox",
        "params": {"size": "256x256", "n": 2},
        "policy": {"cache_ttl_s": 3600},
    }
    source = finished_source(client, key, settings, FakeProvider(), body)
    hit = submit(client, key, body)
    assert hit["status"] == "succeeded" and hit["cost_usd"] == 0
    assert [i["url"] for i in hit["output"]["images"]] == [
        f"/v1/jobs/{hit['id']}/images/0",
        f"/v1/jobs/{hit['id']}/images/1",
    ]
    for index in (0, 1):
        mine = client.get(f"/v1/jobs/{hit['id']}/images/{index}", headers=key)
        theirs = client.get(f"/v1/jobs/{source['id']}/images/{index}", headers=key)
        assert mine.status_code == 200 and mine.content == theirs.content
        assert mine.headers["content-type"] == "image/png"
    assert client.get(f"/v1/jobs/{hit['id']}/images/2", headers=key).status_code == 404
    with session_scope(get_engine(settings.database_url)) as session:  # served, never copied
        assert not list(session.exec(select(Image).where(Image.job_id == hit["id"])))


def test_a_hit_is_checked_against_the_budget_and_holds_nothing(client, settings):
    with session_scope(get_engine(settings.database_url)) as session:
        row, secret = create_key(session, name="budgeted", budget_usd=Decimal("1"))
    key = auth(secret)
    source = finished_source(client, key, settings, FakeProvider())
    hit = submit(client, key)
    assert hit["status"] == "succeeded"
    with session_scope(get_engine(settings.database_url)) as session:
        stored = session.get(ApiKey, row.id)
        assert stored.reserved_usd == 0 and stored.spent_usd == Decimal(str(source["cost_usd"]))
        stored.spent_usd = Decimal("1")  # the budget is spent: budget comes before the cache
        session.add(stored)
    refused = client.post("/v1/jobs", json=CACHED, headers=key)
    assert refused.status_code == 402


def test_without_the_cache_a_submit_reads_no_job(client, key, settings):
    # the hot path: a job with the cache off runs no lookup at all
    statements: list[str] = []
    engine = get_engine(settings.database_url)

    def seen(_conn, _cursor, statement, *_args):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        job = submit(client, key, {"kind": "text", "prompt": "Write a haiku"})
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert job["cache"] is None
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "jobs" in s]
    assert reads == [], reads


def test_a_hit_is_answered_while_the_broker_is_down(settings, key):
    # the cache lives in the database: Redis down never fails a submit, and a hit needs no queue
    with TestClient(create_app(settings)) as client:
        source = finished_source(client, key, settings, FakeProvider())
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as client:
        hit = submit(client, key)
        miss = submit(client, key, prompt="Write a limerick")
    assert hit["status"] == "succeeded" and hit["cache"]["source_job_id"] == source["id"]
    assert miss["status"] == "queued"


def test_a_stream_jobs_hit_ends_its_event_stream_with_done(client, key, settings):
    from httpx_sse import connect_sse

    # `stream` is how the answer is delivered, not what it is: not part of the request's hash
    source = finished_source(client, key, settings, FakeProvider())
    hit = submit(client, key, {**CACHED, "stream": True})
    assert hit["status"] == "succeeded" and hit["cache"]["source_job_id"] == source["id"]
    with connect_sse(client, "GET", f"/v1/jobs/{hit['id']}/events", headers=key) as events:
        seen = list(events.iter_sse())
    assert [e.event for e in seen][-1] == "done" and "delta" not in [e.event for e in seen]
    assert seen[-1].json()["output"]["text"] == source["output"]["text"]
