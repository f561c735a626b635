"""Idempotency-Key over HTTP, on SQLite and PostgreSQL with real Redis: a replay of the same
request returns the first job(s); another request under the key is a 409 that stores nothing."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from api.main import create_app
from tests.helpers import auth, new_key
from tests.integration.test_api_contract import assert_problem
from tests.integration.test_batch import queued_messages, stored_jobs

BODY = {"kind": "text", "prompt": "Write a haiku", "params": {"max_tokens": 20}}


def test_the_same_request_returns_the_first_job_and_another_is_409_naming_the_key(
    client, key, settings
):
    # Given a job submitted under a key
    headers = {**key, "Idempotency-Key": "order-43"}
    first = client.post("/v1/jobs", json=BODY, headers=headers)
    assert first.status_code == 202
    # When the same request is sent again with other key order, whitespace, nulls and 20.0
    spelled = '{"params": {"temperature": null, "max_tokens": 20.0}, "model": null,\n'
    spelled += ' "prompt": "Write a haiku", "kind": "text"}'
    again = client.post(
        "/v1/jobs", content=spelled, headers={**headers, "Content-Type": "application/json"}
    )
    # Then it is the first job
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
    # When other requests are sent under the key, each is refused naming it, and nothing stored
    for other in (
        {**BODY, "prompt": "Write a limerick"},
        {**BODY, "params": {"max_tokens": 21}},
        {**BODY, "metadata": {"campaign": "spring"}},
        {"kind": "text", "messages": [{"role": "user", "content": "Write a haiku"}]},
    ):
        response = client.post("/v1/jobs", json=other, headers=headers)
        body = assert_problem(response, 409, "'order-43'", "different request")
        assert body["type"].endswith("/idempotency-key-reused")
    assert stored_jobs(settings) == 1 and queued_messages(settings) == 1
    # the same Idempotency-Key of another API key is another key: no conflict there
    other_key = {**auth(new_key(settings.database_url, "other")), "Idempotency-Key": "order-43"}
    other_body = {**BODY, "prompt": "Write a limerick"}
    assert client.post("/v1/jobs", json=other_body, headers=other_key).status_code == 202
    assert stored_jobs(settings) == 2


def test_a_replayed_batch_returns_its_jobs_and_a_different_one_is_409(client, key, settings):
    headers = {**key, "Idempotency-Key": "campaign-9"}
    jobs = [{**BODY, "metadata": {"n": i}} for i in range(3)]
    first = client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers)
    assert first.status_code == 202
    again = client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers)
    assert again.status_code == 202
    assert [j["id"] for j in again.json()["data"]] == [j["id"] for j in first.json()["data"]]
    for other in (
        [*jobs[:2], {**jobs[2], "prompt": "Write a sonnet"}],  # one job differs
        jobs[:2],  # a prefix: its keys K#0, K#1 all exist, but it is another request
        list(reversed(jobs)),
    ):
        response = client.post("/v1/jobs/batch", json={"jobs": other}, headers=headers)
        assert_problem(response, 409, "'campaign-9'")
    # a single submit under a batch job's stored key is another request as well
    single = {**key, "Idempotency-Key": "campaign-9#0"}
    assert_problem(client.post("/v1/jobs", json=jobs[0], headers=single), 409, "'campaign-9#0'")
    assert stored_jobs(settings) == 3 and queued_messages(settings) == 3


def test_concurrent_different_requests_under_one_key_store_one_job(settings, key):
    # Given several clients racing with different bodies under one new key
    headers = {**key, "Idempotency-Key": "race-1", "Content-Type": "application/json"}
    bodies = [json.dumps({**BODY, "prompt": f"Write haiku {i}"}) for i in range(6)]
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(6) as pool:
        statuses = sorted(
            pool.map(
                lambda b: client.post("/v1/jobs", content=b, headers=headers).status_code, bodies
            )
        )
    # Then one wins and every other one is told the key is taken (the insert race included)
    assert statuses == [202] + [409] * 5
    assert stored_jobs(settings) == 1 and queued_messages(settings) == 1
