"""The batch lanes' bulk publish, against real Redis: Celery's message, in line order."""

from __future__ import annotations

import base64
import json
import uuid

import redis

from models.bulk_publish import CHUNK, push_batch_jobs
from models.queue import REQUEST_ID_HEADER


def test_jobs_are_queued_on_their_lanes_in_order(clean_redis):
    client = redis.Redis.from_url(clean_redis)
    jobs = [(uuid.uuid4().hex, "text") for _ in range(CHUNK * 2 + 7)]
    jobs.insert(5, (uuid.uuid4().hex, "image"))
    # When the jobs are pushed with the request's id
    assert push_batch_jobs(client, jobs, request_id="req-42") == len(jobs)
    # Then each lane holds its kind's jobs, first line first out (kombu pops from the right)
    taken = [json.loads(raw) for raw in reversed(client.lrange("text.batch", 0, -1))]
    assert [json.loads(base64.b64decode(m["body"]))[0][0] for m in taken] == [
        job_id for job_id, kind in jobs if kind == "text"
    ]
    image = json.loads(client.rpop("images.batch"))
    # As Celery messages of the kind's task, each with its own task id and delivery tag
    assert image["headers"]["task"] == "genq.generate_image"
    assert image["properties"]["delivery_info"]["routing_key"] == "images.batch"
    assert taken[0]["headers"][REQUEST_ID_HEADER] == "req-42"
    assert len({m["headers"]["id"] for m in taken}) == len(taken)
    assert len({m["properties"]["delivery_tag"] for m in taken}) == len(taken)
    assert client.llen("text") == client.llen("images") == 0


def test_a_single_job_is_the_message_send_task_would_store(clean_redis):
    # Given the message Celery's send_task stores for a job, and push_job's for another
    from api.enqueue import Publisher
    from api.request_id import _current

    client = redis.Redis.from_url(clean_redis)
    publisher = Publisher(clean_redis)
    token = _current.set("req-7")
    try:
        publisher.app.send_task(
            "genq.generate_text",
            args=["a" * 32],
            queue="text",
            headers={REQUEST_ID_HEADER: "req-7"},
        )
        publisher.publish(job_id="b" * 32, kind="text")
    finally:
        _current.reset(token)
        publisher.close()
    # Then both are on the kind's interactive queue, the same but for their ids and argument
    by_celery, ours = (json.loads(raw) for raw in reversed(client.lrange("text", 0, -1)))
    assert client.llen("text.batch") == 0
    random = {"id", "root_id", "correlation_id", "reply_to", "delivery_tag", "argsrepr", "origin"}
    nested = {"body", "headers", "properties"}

    def fixed(message: dict) -> dict:
        flat = {**message, **message["headers"], **message["properties"]}
        return {k: v for k, v in flat.items() if k not in random | nested}

    assert fixed(ours) == fixed(by_celery)
    assert ours["headers"]["task"] == "genq.generate_text"
    assert ours["headers"][REQUEST_ID_HEADER] == "req-7"
    assert json.loads(base64.b64decode(ours["body"])) == [
        ["b" * 32],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    assert ours["headers"]["argsrepr"] == f"['{'b' * 32}']"
