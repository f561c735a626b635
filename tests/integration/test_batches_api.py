"""`/v1/batches` create, retrieve and list: lines become queued genq jobs carrying their batch,
planned as `POST /v1/jobs` plans them, the whole batch reserved against the key's budget."""

from __future__ import annotations

import json
from decimal import Decimal

import redis
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.db import get_engine, session_scope
from models.jobs import Job
from models.keys import ApiKey, create_key
from models.queue import BATCH_QUEUE_BY_KIND, FINALIZE_TASK, TEXT_QUEUE
from tests.helpers import auth, free_port, new_key
from tests.integration.batches_helpers import (
    IMAGES,
    chat_line,
    counts,
    create,
    jsonl,
    upload,
)


def batch_jobs(database_url: str, batch_id: str) -> list[Job]:
    with session_scope(get_engine(database_url)) as session:
        query = select(Job).where(Job.batch_id == batch_id).order_by(Job.batch_line)
        return list(session.exec(query))


def test_each_line_becomes_a_queued_job_planned_as_post_v1_jobs_plans_it(client, key, settings):
    # Given lines naming a tier, a model, OpenAI's max_completion_tokens and text content parts
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]
    lines = [
        chat_line("tier", model="economy", max_tokens=20),
        chat_line("model", model="gpt-4.1-nano", max_completion_tokens=30, temperature=0.5),
        {**chat_line("parts"), "body": {"max_tokens": 10, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]}},
    ]  # fmt: skip
    file_id = upload(client, key, jsonl(*lines))
    # When a batch is created
    answer = create(client, key, file_id, metadata={"run": "nightly"})
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    # Then it runs at once, with OpenAI's shape
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "in_progress" and batch["errors"] is None
    assert batch["in_progress_at"] and batch["expires_at"] - batch["created_at"] == 86_400
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"run": "nightly"} and batch["cost_usd"] == 0
    # And each line is a queued job carrying its batch, custom_id and line, in order
    jobs = batch_jobs(settings.database_url, batch["id"])
    assert [(j.custom_id, j.batch_line, j.status) for j in jobs] == [
        ("tier", 1, "queued"),
        ("model", 2, "queued"),
        ("parts", 3, "queued"),
    ]
    assert jobs[1].request["params"] == {"max_tokens": 30, "temperature": 0.5}
    assert jobs[2].request["messages"][1] == {"role": "user", "content": "Say hi"}
    assert all(j.published_at is not None for j in jobs)
    # And each job is planned exactly as the same request through POST /v1/jobs
    plain = [
        {"kind": "text", "prompt": "Say hi", "policy": {"tier": "economy"},
         "params": {"max_tokens": 20}},
        {"kind": "text", "prompt": "Say hi", "model": "gpt-4.1-nano",
         "params": {"max_tokens": 30, "temperature": 0.5}},
        {"kind": "text", "messages": [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Say hi"}], "params": {"max_tokens": 10}},
    ]  # fmt: skip
    for job, body in zip(jobs, plain, strict=True):
        direct = client.post("/v1/jobs", headers=key, json=body).json()
        assert (job.model, job.estimated_cost_usd) == (
            direct["model"],
            Decimal(str(direct["estimated_cost_usd"])),
        )
        assert job.routing == direct["routing"]
    # And their messages wait in Redis (3 batch jobs + 3 direct ones)
    assert redis.Redis.from_url(settings.redis_url).llen(BATCH_QUEUE_BY_KIND["text"]) >= 3


def test_jobs_show_their_batch_and_filter_by_it(client, key):
    first = create(client, key, upload(client, key, jsonl(chat_line("a"), chat_line("b")))).json()
    create(client, key, upload(client, key, jsonl(chat_line("a"))))
    client.post("/v1/jobs", headers=key, json={"kind": "text", "prompt": "plain"})
    listed = client.get(f"/v1/jobs?batch_id={first['id']}", headers=key).json()["data"]
    assert sorted(j["custom_id"] for j in listed) == ["a", "b"]
    assert {j["batch_id"] for j in listed} == {first["id"]}
    one = client.get(f"/v1/jobs/{listed[0]['id']}", headers=key).json()
    assert one["batch_id"] == first["id"] and one["custom_id"] in ("a", "b")
    everything = client.get("/v1/jobs", headers=key).json()["data"]
    assert len(everything) == 4
    plain = [j for j in everything if j["batch_id"] is None]
    assert len(plain) == 1 and plain[0]["custom_id"] is None


def test_an_image_line_becomes_an_image_job(client, key, settings):
    line = {"custom_id": "fox", "method": "POST", "url": IMAGES, "body": {
        "model": "dall-e-3", "prompt": "a fox", "size": "1024x1024", "quality": "hd",
        "response_format": "b64_json"}}  # fmt: skip
    batch = create(client, key, upload(client, key, jsonl(line)), endpoint=IMAGES).json()
    assert batch["status"] == "in_progress" and batch["endpoint"] == IMAGES
    [job] = batch_jobs(settings.database_url, batch["id"])
    assert (job.kind, job.model, job.request["prompt"]) == ("image", "dall-e-3", "a fox")
    assert job.request["params"]["quality"] == "hd"
    assert job.meta == {"openai_response_format": "b64_json"}
    queued = redis.Redis.from_url(settings.redis_url).lrange(BATCH_QUEUE_BY_KIND["image"], 0, -1)
    assert [json.loads(m)["headers"]["task"] for m in queued] == ["genq.generate_image"]


def _budgeted(database_url: str, budget: str) -> tuple[str, dict]:
    with session_scope(get_engine(database_url)) as session:
        key, secret = create_key(session, name="budgeted", budget_usd=Decimal(budget))
    return key.id, auth(secret)


def _reserved(database_url: str, key_id: str) -> Decimal:
    with session_scope(get_engine(database_url)) as session:
        return session.get(ApiKey, key_id).reserved_usd


def test_a_batch_over_the_budget_is_refused_whole_and_stores_nothing(client, settings):
    # Given a key whose budget covers one line's worst case, not three
    key_id, key = _budgeted(settings.database_url, "0.00004")
    lines = [chat_line(f"r{i}", model="gpt-4.1-nano", max_tokens=100) for i in range(3)]
    file_id = upload(client, key, jsonl(*lines))
    # When the batch is created
    answer = create(client, key, file_id)
    # Then 402, nothing stored, nothing reserved, nothing queued
    assert answer.status_code == 402, answer.text
    assert "this batch of 3 requests may cost up to" in answer.json()["detail"]
    assert counts(settings.database_url) == (0, 0)
    assert _reserved(settings.database_url, key_id) == 0
    assert redis.Redis.from_url(settings.redis_url).llen(BATCH_QUEUE_BY_KIND["text"]) == 0
    assert client.get("/v1/batches", headers=key).json()["data"] == []


def test_a_batch_within_the_budget_reserves_its_whole_worst_case(client, settings):
    key_id, key = _budgeted(settings.database_url, "1")
    lines = [chat_line(f"r{i}", model="gpt-4.1-nano", max_tokens=100) for i in range(3)]
    batch = create(client, key, upload(client, key, jsonl(*lines))).json()
    jobs = batch_jobs(settings.database_url, batch["id"])
    worst = sum(j.reserved_usd for j in jobs)
    assert worst > 0 and all(j.reserved_usd == j.estimated_cost_usd for j in jobs)
    assert _reserved(settings.database_url, key_id) == worst


def test_another_keys_batch_and_file_do_not_exist(client, key, settings):
    file_id = upload(client, key, jsonl(chat_line("a")))
    batch = create(client, key, file_id).json()
    other = auth(new_key(settings.database_url, "other"))
    assert client.get(f"/v1/batches/{batch['id']}", headers=other).status_code == 404
    assert create(client, other, file_id).status_code == 404
    assert client.get("/v1/batches", headers=other).json()["data"] == []
    assert client.get(f"/v1/jobs?batch_id={batch['id']}", headers=other).json()["data"] == []
    assert client.get(f"/v1/batches?after={batch['id']}", headers=other).status_code == 404
    assert counts(settings.database_url) == (1, 1)


def test_batches_list_newest_first_in_pages(client, key):
    file_id = upload(client, key, jsonl(chat_line("a")))
    ids = [create(client, key, file_id).json()["id"] for _ in range(3)]
    page = client.get("/v1/batches?limit=2", headers=key).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[1])
    rest = client.get(f"/v1/batches?limit=2&after={page['last_id']}", headers=key).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_with_redis_down_the_batch_is_stored_and_left_to_the_sweeper(settings):
    # Given an API whose broker does not answer
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as client:
        key = auth(new_key(settings.database_url))
        file_id = upload(client, key, jsonl(chat_line("a"), chat_line("b")))
        # When a batch is created
        batch = create(client, key, file_id).json()
    # Then it is accepted, its jobs stored unpublished: the outbox publishes them later
    assert batch["status"] == "in_progress"
    jobs = batch_jobs(settings.database_url, batch["id"])
    assert len(jobs) == 2 and all(j.published_at is None for j in jobs)


def test_cancelling_a_batchs_last_queued_job_queues_its_finalize_at_once(client, key, settings):
    # Given a batch of two queued lines (no worker runs them)
    file_id = upload(client, key, jsonl(chat_line("a"), chat_line("b")))
    batch = create(client, key, file_id).json()
    first, second = (job.id for job in batch_jobs(settings.database_url, batch["id"]))
    queue = redis.Redis.from_url(settings.redis_url)

    def finalizes() -> list[list]:
        messages = [json.loads(m) for m in queue.lrange(TEXT_QUEUE, 0, -1)]
        return [m["headers"]["argsrepr"] for m in messages if m["headers"]["task"] == FINALIZE_TASK]

    # When one is cancelled, the batch still has a job: no finalize yet
    assert client.post(f"/v1/jobs/{first}/cancel", headers=key).status_code == 200
    assert finalizes() == []
    # When the last one is cancelled, its finalize is queued by name, not left to the sweeper
    assert client.post(f"/v1/jobs/{second}/cancel", headers=key).json()["status"] == "cancelled"
    assert finalizes() == [repr([batch["id"]])]
