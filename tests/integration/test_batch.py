"""`POST /v1/jobs/batch` over HTTP, on SQLite and PostgreSQL with real Redis: all or nothing."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import func, select

from api.main import create_app
from models.db import get_engine, session_scope
from models.jobs import Job
from models.keys import ApiKey, create_key
from models.schemas import MAX_BATCH_JOBS
from tests.helpers import auth, new_key
from tests.integration.test_api_contract import assert_problem, run_all
from tests.integration.test_budgets import ESTIMATE, JOB


def stored_jobs(settings) -> int:
    with session_scope(get_engine(settings.database_url)) as session:
        return session.exec(select(func.count()).select_from(Job)).one()


def queued_messages(settings) -> int:
    return redis.Redis.from_url(settings.redis_url).llen("text")


def test_a_batch_is_accepted_in_order_published_once_each_and_runs(client, key, settings):
    bodies = [{"kind": "text", "prompt": f"Tagline {i}", "metadata": {"n": i}} for i in range(5)]
    response = client.post("/v1/jobs/batch", json={"jobs": bodies}, headers=key)
    assert response.status_code == 202, response.text
    jobs = response.json()["data"]
    assert [j["metadata"]["n"] for j in jobs] == list(range(5))
    assert {j["status"] for j in jobs} == {"queued"} and len({j["id"] for j in jobs}) == 5
    assert queued_messages(settings) == 5
    assert run_all(settings, [j["id"] for j in jobs]) == ["succeeded"] * 5
    shown = [client.get(f"/v1/jobs/{j['id']}", headers=key).json() for j in jobs]
    assert {j["status"] for j in shown} == {"succeeded"} and all(j["output"] for j in shown)


@pytest.mark.parametrize(
    ("jobs", "needle"),
    [
        ([JOB, {"kind": "text"}], "jobs.1"),  # invalid item: pydantic names its place
        ([JOB, {**JOB, "model": "gpt-nonexistent"}], "jobs.1: unknown model"),  # policy refusal
        ([], "jobs"),
        ([JOB] * (MAX_BATCH_JOBS + 1), "jobs"),
    ],
)
def test_one_bad_job_refuses_the_whole_batch_and_stores_nothing(
    client, key, settings, jobs, needle
):
    response = client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=key)
    body = assert_problem(response, 422)
    assert needle in body["detail"] or any(
        needle in ".".join(map(str, e["loc"])) for e in body.get("errors", [])
    ), body
    assert stored_jobs(settings) == 0 and queued_messages(settings) == 0


def test_a_batch_over_the_budget_is_402_and_one_that_fits_reserves_its_sum(client, settings):
    with session_scope(get_engine(settings.database_url)) as session:
        budgeted, secret = create_key(session, name="b", budget_usd=ESTIMATE * 5)
    headers = auth(secret)
    too_many = client.post("/v1/jobs/batch", json={"jobs": [JOB] * 6}, headers=headers)
    assert_problem(too_many, 402, "budget")
    assert stored_jobs(settings) == 0
    fits = client.post("/v1/jobs/batch", json={"jobs": [JOB] * 5}, headers=headers)
    assert fits.status_code == 202
    with session_scope(get_engine(settings.database_url)) as session:
        assert session.get(ApiKey, budgeted.id).reserved_usd == ESTIMATE * 5


def test_a_retried_batch_with_its_idempotency_key_returns_the_first_jobs(client, key, settings):
    headers = {**key, "Idempotency-Key": "campaign-7"}
    first = client.post("/v1/jobs/batch", json={"jobs": [JOB] * 3}, headers=headers)
    again = client.post("/v1/jobs/batch", json={"jobs": [JOB] * 3}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert [j["id"] for j in again.json()["data"]] == [j["id"] for j in first.json()["data"]]
    assert stored_jobs(settings) == 3 and queued_messages(settings) == 3
    # a different request under a key that is partly used is a conflict, not a silent mix
    single = {**key, "Idempotency-Key": "campaign-8#0"}
    assert client.post("/v1/jobs", json=JOB, headers=single).status_code == 202
    mixed = {**key, "Idempotency-Key": "campaign-8"}
    assert_problem(client.post("/v1/jobs/batch", json={"jobs": [JOB] * 2}, headers=mixed), 409)
    assert stored_jobs(settings) == 4


def test_with_the_broker_down_a_batch_is_stored_for_the_sweeper(settings):
    dead = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(dead)) as client:
        response = client.post(
            "/v1/jobs/batch", json={"jobs": [JOB] * 3}, headers=auth(new_key(settings.database_url))
        )
    assert response.status_code == 202
    with session_scope(get_engine(settings.database_url)) as session:
        jobs = session.exec(select(Job)).all()
    assert len(jobs) == 3 and {(j.status, j.published_at) for j in jobs} == {("queued", None)}
