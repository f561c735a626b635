"""Contract v1 over HTTP (in-process ASGI), on SQLite and PostgreSQL, with real Redis."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import select

from api.key_cache import VerifiedKeys
from api.main import create_app
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.jobs import Job
from models.key_events import announce_key_changed
from models.keys import ApiKey, create_key, rotate_webhook_secret
from models.queue import TASK_BY_KIND
from tests.helpers import FakeProvider, auth, new_key, wait_until
from worker.retry import RetryPolicy
from worker.runner import Runner

PROBLEM = "application/problem+json"


def run_all(settings, job_ids, provider=None):
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=provider or FakeProvider(),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1),
    )
    return [runner.run(job_id) for job_id in job_ids]


def assert_problem(response, status: int, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    for needle in needles:
        assert needle in body["detail"], body
    return body


def test_submit_text_job_is_accepted_and_queued(client, key, settings):
    # When a text job is submitted
    response = client.post(
        "/v1/jobs",
        json={"kind": "text", "prompt": "Write a haiku", "metadata": {"campaign": "spring"}},
        headers=key,
    )
    # Then it is 202 with Location, the job object, and one message carrying only its id
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "text" and job["attempts"] == 0
    assert job["model"] == "gpt-4.1-mini" and job["metadata"] == {"campaign": "spring"}
    assert job["routing"]["mode"] == "policy" and job["routing"]["tier"] == "balanced"
    assert job["estimated_cost_usd"] > 0 and job["cost_usd"] == 0 and job["output"] is None
    messages = redis.Redis.from_url(settings.redis_url).lrange("text", 0, -1)
    assert len(messages) == 1
    assert f'[["{job["id"]}"]'.encode() in messages[0] or job["id"].encode() in messages[0]
    assert b"Write a haiku" not in messages[0]
    assert TASK_BY_KIND["text"].encode() in messages[0]


def test_poll_shows_output_usage_and_cost(client, key, settings):
    text = client.post(
        "/v1/jobs",
        json={
            "kind": "text",
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Hi"},
            ],
        },
        headers=key,
    ).json()
    image = client.post(
        "/v1/jobs",
        json={"kind": "image", "prompt": "a red fox", "params": {"size": "512x512", "n": 2}},
        headers=key,
    ).json()
    assert run_all(settings, [text["id"], image["id"]]) == ["succeeded", "succeeded"]

    done = client.get(f"/v1/jobs/{text['id']}", headers=key).json()
    assert done["status"] == "succeeded" and done["output"] == {
        "text": "reply to Hi",
        "finish_reason": "stop",
    }
    assert done["usage"] == {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
    assert done["cost_usd"] == pytest.approx((100 * 0.40 + 50 * 1.60) / 1e6, abs=1e-12)
    assert done["provider"] == "fake" and done["started_at"] and done["finished_at"]

    pictures = client.get(f"/v1/jobs/{image['id']}", headers=key).json()
    urls = [img["url"] for img in pictures["output"]["images"]]
    assert urls == [f"/v1/jobs/{image['id']}/images/0", f"/v1/jobs/{image['id']}/images/1"]
    png = client.get(urls[1], headers=key)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert pictures["cost_usd"] == pytest.approx(0.036)
    assert_problem(client.get(f"/v1/jobs/{image['id']}/images/2", headers=key), 404)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"kind": "video", "prompt": "x"}, "kind"),
        ({"kind": "text", "messages": []}, "messages"),
        (
            {"kind": "text", "prompt": "x", "messages": [{"role": "user", "content": "x"}]},
            "exactly one",
        ),
        ({"kind": "text"}, "exactly one"),
        ({"kind": "text", "prompt": ""}, "prompt"),
        ({"kind": "text", "prompt": "x", "model": "gpt-99"}, "unknown model"),
        ({"kind": "text", "prompt": "x", "model": "dall-e-2"}, "makes image"),
        (
            {"kind": "image", "prompt": "x", "model": "dall-e-3", "params": {"size": "256x256"}},
            "not supported",
        ),
        ({"kind": "image", "prompt": "x", "model": "dall-e-3", "params": {"n": 2}}, "n must be"),
        ({"kind": "image", "prompt": "x", "params": {"n": 0}}, "params.n"),
        ({"kind": "image", "prompt": "x", "params": {"n": 11}}, "n must be"),
        ({"kind": "image", "prompt": "x" * 1001, "model": "dall-e-2"}, "characters"),
        ({"kind": "text", "prompt": "x", "params": {"max_tokens": 10**6}}, "max_tokens"),
        ({"kind": "text", "prompt": "x", "params": {"temperature": 5}}, "temperature"),
        ({"kind": "text", "prompt": "x", "params": {"bogus": 1}}, "bogus"),
        ({"kind": "text", "prompt": "x", "policy": {"max_cost_usd": 0.0000001}}, "max_cost_usd"),
    ],
)
def test_invalid_requests_get_422_with_a_reason(client, key, settings, body, needle):
    response = client.post("/v1/jobs", json=body, headers=key)
    problem = assert_problem(response, 422)
    assert needle in problem["detail"] or any(needle in str(e) for e in problem["errors"])
    assert redis.Redis.from_url(settings.redis_url).llen("text") == 0  # nothing enqueued


def test_context_window_is_enforced(settings, tiktoken_dir, tmp_path):
    # A catalogue entry with a tiny window proves the check without a huge body
    extra = tmp_path / "catalogue.toml"
    extra.write_text(
        '[models."tiny"]\nkind = "text"\ntier = "economy"\ncontext_window = 20\n'
        "max_output_tokens = 10\n"
    )
    custom = settings.model_copy(update={"catalogue_path": extra})
    with TestClient(create_app(custom)) as client:
        key = auth(new_key(settings.database_url))
        body = {
            "kind": "text",
            "prompt": "one two three four five six seven eight nine ten "
            "eleven twelve thirteen fourteen fifteen sixteen",
            "model": "tiny",
        }
        assert_problem(client.post("/v1/jobs", json=body, headers=key), 422, "context window")


def test_malformed_json_is_422(client, key):
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={**key, "content-type": "application/json"}
    )
    assert_problem(response, 422)


def test_body_over_the_limit_is_413_and_nothing_is_stored(client, key, settings):
    body = {"kind": "text", "prompt": "x" * (settings.max_body_bytes + 10)}
    assert_problem(client.post("/v1/jobs", json=body, headers=key), 413, "GENQ_MAX_BODY_BYTES")
    assert client.get("/v1/jobs", headers=key).json()["data"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_bad_key_is_401(client, headers):
    for method, path in [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/models"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/jobs/abc"),
    ]:
        response = client.request(
            method, path, headers=headers, json={"kind": "text", "prompt": "x"}
        )
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(client, settings):
    secret = new_key(settings.database_url)
    with session_scope(get_engine(settings.database_url)) as session:
        for key in session.exec(select(ApiKey)).all():
            key.revoked_at = key.created_at
    assert_problem(client.get("/v1/jobs", headers=auth(secret)), 401, "revoked")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def revoke_all(settings) -> None:
    with session_scope(get_engine(settings.database_url)) as session:
        for key in session.exec(select(ApiKey)).all():
            key.revoked_at = key.created_at


def test_a_revoked_key_works_at_most_auth_cache_s_longer(settings):
    # Given an API whose verified-key cache keeps a key 5 s, on a clock the test moves
    clock = Clock()
    app = create_app(settings.model_copy(update={"auth_cache_s": 5}))
    app.state.services.verified_keys = VerifiedKeys(5, clock=clock)
    secret = new_key(settings.database_url)
    with TestClient(app) as client:
        assert client.get("/v1/jobs", headers=auth(secret)).status_code == 200
        # When the key is revoked, it is still served from memory within the 5 s
        revoke_all(settings)
        clock.now = 4.9
        assert client.get("/v1/jobs", headers=auth(secret)).status_code == 200
        # Then from 5 s on it is read again: 401
        clock.now = 5.0
        assert_problem(client.get("/v1/jobs", headers=auth(secret)), 401, "revoked")
        clock.now = 0.0
        assert_problem(client.get("/v1/jobs", headers=auth(secret)), 401, "revoked")


def test_with_auth_cache_s_zero_a_revoked_key_is_401_at_once(settings):
    secret = new_key(settings.database_url)
    with TestClient(create_app(settings.model_copy(update={"auth_cache_s": 0}))) as client:
        assert client.get("/v1/jobs", headers=auth(secret)).status_code == 200
        revoke_all(settings)
        assert_problem(client.get("/v1/jobs", headers=auth(secret)), 401, "revoked")


def test_a_new_webhook_secret_reaches_a_cached_key_at_once(settings):
    # Given an API that keeps a verified key 60 s, and a key cached there without a webhook secret
    app = create_app(
        settings.model_copy(update={"auth_cache_s": 60, "webhook_allow_private": True})
    )
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        row, secret = create_key(session, name="hooks")
    job = {"kind": "text", "prompt": "hi", "webhook_url": "http://127.0.0.1:9/hook"}
    with TestClient(app) as client:
        assert_problem(client.post("/v1/jobs", json=job, headers=auth(secret)), 422, "secret")
        # When `genq keys webhook-secret` does its part: commit, then publish the key's id
        with session_scope(engine) as session:
            rotate_webhook_secret(session, ref=row.id)
        assert announce_key_changed(settings.redis_url, row.id) is None
        # Then the API reads the key again at once (a bounded wait for the message, not the TTL)
        wait_until(
            lambda: client.post("/v1/jobs", json=job, headers=auth(secret)).status_code == 202,
            timeout_s=5,
            what="the submit accepted with the new secret",
        )


def test_a_cached_key_is_still_only_its_own(client, settings):
    # two keys used in turn, both cached: each sees its own jobs only
    mine, other = auth(new_key(settings.database_url)), auth(new_key(settings.database_url, "b"))
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": "hi"}, headers=mine).json()
    for _ in range(2):
        assert client.get(f"/v1/jobs/{job['id']}", headers=mine).status_code == 200
        assert_problem(client.get(f"/v1/jobs/{job['id']}", headers=other), 404)


def test_another_keys_job_is_404(client, key, settings):
    other = auth(new_key(settings.database_url, name="other"))
    job = client.post("/v1/jobs", json={"kind": "image", "prompt": "fox"}, headers=key).json()
    run_all(settings, [job["id"]])
    assert client.get(f"/v1/jobs/{job['id']}", headers=key).status_code == 200
    assert_problem(client.get(f"/v1/jobs/{job['id']}", headers=other), 404)
    assert_problem(client.get(f"/v1/jobs/{job['id']}/images/0", headers=other), 404)
    assert client.get("/v1/jobs", headers=other).json()["data"] == []
    assert client.get("/v1/usage", headers=other).json()["total"]["jobs"] == 0
    assert_problem(client.get("/v1/jobs/does-not-exist", headers=key), 404)


def test_list_paginates_with_a_cursor_and_filters_by_status(client, key, settings):
    ids = [
        client.post("/v1/jobs", json={"kind": "text", "prompt": f"p{i}"}, headers=key).json()["id"]
        for i in range(5)
    ]
    run_all(settings, ids[:2])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=key).json()
        assert len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each job exactly once
    done = client.get("/v1/jobs", params={"status": "succeeded"}, headers=key).json()["data"]
    assert sorted(j["id"] for j in done) == sorted(ids[:2])
    assert_problem(client.get("/v1/jobs", params={"status": "nope"}, headers=key), 422)
    assert_problem(client.get("/v1/jobs", params={"limit": 0}, headers=key), 422)
    assert_problem(client.get("/v1/jobs", params={"cursor": "garbage!"}, headers=key), 422)


def test_idempotency_key_returns_the_first_job(client, key, settings):
    headers = {**key, "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json={"kind": "text", "prompt": "a"}, headers=headers)
    again = client.post("/v1/jobs", json={"kind": "text", "prompt": "a"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert redis.Redis.from_url(settings.redis_url).llen("text") == 1  # published once


def test_models_lists_the_catalogue(client, key):
    data = {m["id"]: m for m in client.get("/v1/models", headers=key).json()["data"]}
    assert {
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "dall-e-2",
        "dall-e-3",
        "gpt-image-1",
    } <= set(data)
    assert data["gpt-4o-mini"]["input_per_1m"] == 0.15
    assert data["gpt-4o-mini"]["context_window"] == 128000 and data["gpt-4o"]["tier"] == "premium"
    assert data["dall-e-3"]["image_prices"]["hd"]["1024x1792"] == 0.12


def test_usage_sums_attempts_by_model_and_day(client, key, settings):
    ids = [
        client.post("/v1/jobs", json=body, headers=key).json()["id"]
        for body in (
            {"kind": "text", "prompt": "a"},
            {"kind": "text", "prompt": "b", "model": "gpt-4o"},
            {"kind": "image", "prompt": "c"},
        )
    ]
    run_all(settings, ids)
    by_model = client.get("/v1/usage", params={"group_by": "model"}, headers=key).json()
    rows = {row["model"]: row for row in by_model["data"]}
    assert set(rows) == {"gpt-4.1-mini", "gpt-4o", "gpt-image-1"}
    assert rows["gpt-4o"]["prompt_tokens"] == 100 and rows["gpt-4o"]["jobs"] == 1
    assert rows["gpt-4o"]["cost_usd"] == pytest.approx((100 * 2.5 + 50 * 10) / 1e6)
    total = by_model["total"]
    assert total["jobs"] == 3 and total["attempts"] == 3 and total["total_tokens"] == 300
    jobs = [client.get(f"/v1/jobs/{i}", headers=key).json() for i in ids]
    assert total["cost_usd"] == pytest.approx(sum(j["cost_usd"] for j in jobs), abs=1e-9)
    by_day = client.get("/v1/usage", params={"group_by": "day"}, headers=key).json()
    assert len(by_day["data"]) == 1 and by_day["data"][0]["jobs"] == 3
    assert len(by_day["data"][0]["day"]) == 10  # YYYY-MM-DD
    assert_problem(client.get("/v1/usage", params={"group_by": "planet"}, headers=key), 422)


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "genq_api_requests_total" in metrics.text


def test_metrics_count_requests_by_route_template_and_status(client, key):
    from prometheus_client import REGISTRY

    def count(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return REGISTRY.get_sample_value("genq_api_requests_total", labels) or 0.0

    before = count("/v1/jobs/{job_id}", "404"), count("/v1/jobs", "200")
    client.get("/v1/jobs/no-such-job", headers=key)
    client.get("/v1/jobs", headers=key)
    client.get("/v1/jobs", headers=key)
    # job ids never become label values: the template is the label
    assert count("/v1/jobs/{job_id}", "404") == before[0] + 1
    assert count("/v1/jobs", "200") == before[1] + 2
    observed = {"method": "GET", "route": "/v1/jobs"}
    assert REGISTRY.get_sample_value("genq_api_request_seconds_count", observed) >= 2


def test_when_redis_is_down_ready_is_503_and_a_submit_is_stored_for_the_sweeper(settings):
    dead = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    secret = new_key(settings.database_url)
    with TestClient(create_app(dead)) as client:
        assert_problem(client.get("/readyz"), 503, "redis")
        response = client.post(
            "/v1/jobs", json={"kind": "text", "prompt": "x"}, headers=auth(secret)
        )
        assert response.status_code == 202 and response.json()["status"] == "queued"
    # the job is kept, marked unpublished: the workers' sweeper publishes it (transactional outbox)
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, response.json()["id"])
        assert job.status == "queued" and job.published_at is None


def test_a_database_outage_is_503_with_retry_after(settings, tmp_path):
    # A SQLite path whose directory does not exist: every connection fails
    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/missing/x.db"})
    with TestClient(create_app(broken)) as client:
        response = client.post(
            "/v1/jobs", json={"kind": "text", "prompt": "x"}, headers=auth("genq_whatever")
        )
        assert_problem(response, 503, "nothing was stored")
        assert response.headers["retry-after"] == "5"
        assert_problem(client.get("/readyz"), 503, "database")


def watched_submit(client, settings, headers, **extra) -> tuple[object, list[tuple[str, bool]]]:
    """A submit, and each statement it ran: its verb, and whether it ran in autocommit."""
    from sqlalchemy import event

    statements: list[tuple[str, bool]] = []
    engine = get_engine(settings.database_url)

    def seen(conn, _cursor, statement, *_args):
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        statements.append((statement.split()[0], autocommit))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        job = client.post(
            "/v1/jobs", json={"kind": "text", "prompt": "hi"}, headers={**headers, **extra}
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return job, statements


def test_a_plain_submit_of_a_verified_key_runs_one_statement(client, key, settings):
    # Given a key already verified (cached) and without a budget
    assert client.get("/v1/jobs", headers=key).status_code == 200
    # When it submits a job
    job, statements = watched_submit(client, settings, key)
    # Then the one statement is the job's INSERT (no key lookup, no ORM flush of other rows),
    # in autocommit: no BEGIN and no COMMIT around it
    assert job.status_code == 202
    assert statements == [("INSERT", True)]
    with session_scope(get_engine(settings.database_url)) as session:
        stored = session.get(Job, job.json()["id"])
    assert stored.status == "queued" and stored.meta == {} and stored.request["prompt"] == "hi"


def test_a_submit_that_reads_or_reserves_stores_in_one_transaction(client, key, settings):
    # Given a verified key without a budget, and one with a budget
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        _budgeted, secret = create_key(session, name="budgeted", budget_usd=Decimal("5"))
    budgeted = auth(secret)
    for headers in (key, budgeted):
        assert client.get("/v1/jobs", headers=headers).status_code == 200
    # When one submits with an Idempotency-Key (a lookup first), the other a plain job
    replayable, looked_up = watched_submit(client, settings, key, **{"Idempotency-Key": "k-1"})
    reserved, reserving = watched_submit(client, settings, budgeted)
    # Then each INSERT shares a transaction with the statements around it
    assert replayable.status_code == reserved.status_code == 202
    assert ("INSERT", False) in looked_up and len(looked_up) > 1
    assert ("INSERT", False) in reserving and ("UPDATE", False) in reserving
    assert not any(autocommit for _verb, autocommit in looked_up + reserving)
