"""Publishing jobs as prebuilt Celery messages: many at once to their batch lanes, in Redis
pipelines, or one interactive job in one LPUSH.

`Celery.send_task` costs ~0.3 ms of CPU per message here (building the message, kombu's publish
path, one round trip each): ~3,000 jobs/s at best. A batch of 50,000 lines must be queued at
≥ 5,000 jobs/s, so this builds the same Celery (protocol 2) message kombu's Redis transport
would store, from a template rendered once, and `LPUSH`es them a chunk per command. The worker
cannot tell them apart from `send_task`'s (the e2e tests run them through real workers). No
`task-sent` event is emitted (Flower shows the task once a worker receives it).

It is the one publish function for batch jobs: the API uses it at batch create
(`api/enqueue.py` `Publisher.publish_batch`), the workers when they republish a batch job
(`worker/tasks.py` `dispatch`). A single submit publishes through `push_job` too: `send_task`
was ~0.5 ms of its CPU (docs/performance.md).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

import redis

from models.queue import REQUEST_ID_HEADER, TASK_BY_KIND, queue_for

#: messages per LPUSH (one command, one pipeline entry)
CHUNK = 1000
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
#: Celery's protocol-2 body after the args: no kwargs, no callbacks
_EMBED = ', {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def _template(task: str, queue: str, request_id: str | None, reply_to: str | None = None) -> str:
    """The message as kombu stores it, with `@ID@`, `@TAG@`, `@BODY@`, `@ARG@` to fill in (a
    fresh `reply_to` unless given)."""
    headers = {
        "lang": "py",
        "task": task,
        "id": "@ID@",
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": "@ID@",
        "parent_id": None,
        "argsrepr": "['@ARG@']",
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    message = {
        "body": "@BODY@",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": "@ID@",
            "reply_to": reply_to or str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "@TAG@",
        },
    }
    return json.dumps(message)


def _message(template: str, job_id: str) -> str:
    if not job_id.isalnum():  # ids are hex: nothing in them needs JSON escaping
        raise ValueError(f"not a job id: {job_id!r}")
    body = base64.b64encode(f'[["{job_id}"]{_EMBED}'.encode()).decode()
    return (
        template.replace("@ID@", str(uuid.uuid4()))
        .replace("@TAG@", str(uuid.uuid4()))
        .replace("@BODY@", body)
        .replace("@ARG@", job_id)
    )


def push_batch_jobs(
    client: redis.Redis, jobs: Iterable[tuple[str, str]], *, request_id: str | None = None
) -> int:
    """Queue each (job id, kind) on its kind's batch lane, in the given order; returns how many.

    Raises redis.RedisError when Redis cannot take them (some may be queued: a duplicate
    message is harmless, the claim lets one delivery run a job)."""
    by_queue: dict[str, list[str]] = defaultdict(list)
    templates: dict[str, str] = {}
    count = 0
    with client.pipeline(transaction=False) as pipe:
        for job_id, kind in jobs:
            queue = queue_for(kind, batch=True)
            if queue not in templates:
                templates[queue] = _template(TASK_BY_KIND[kind], queue, request_id)
            waiting = by_queue[queue]
            waiting.append(_message(templates[queue], job_id))
            count += 1
            if len(waiting) >= CHUNK:
                pipe.lpush(queue, *waiting)
                waiting.clear()
                pipe.execute()
        for queue, waiting in by_queue.items():
            if waiting:
                pipe.lpush(queue, *waiting)
        pipe.execute()
    return count


#: placeholders of the single job's template, filled per message (none can occur in the rest)
_RID, _REPLY = "@RID@", "@REPLY@"


@lru_cache
def _single_template(task: str, queue: str, with_request_id: bool) -> str:
    """A single job's template, rendered once per task and queue (a submit rendered the whole
    message with `json.dumps` before): its request id and `reply_to` are placeholders too."""
    return _template(task, queue, _RID if with_request_id else None, reply_to=_REPLY)


def single_message(*, job_id: str, kind: str, request_id: str | None) -> tuple[str, str]:
    """One interactive job's queue and message: the same text `_template` renders for it, a
    fresh `reply_to` per message as before."""
    queue = queue_for(kind)
    template = _single_template(TASK_BY_KIND[kind], queue, bool(request_id))
    message = _message(template, job_id).replace(_REPLY, str(uuid.uuid4()), 1)
    if request_id:  # last: nothing filled in after it can be changed by what the id holds
        message = message.replace(_RID, json.dumps(request_id)[1:-1], 1)
    return queue, message


def push_job(client: redis.Redis, *, job_id: str, kind: str, request_id: str | None = None) -> str:
    """Queue one job on its kind's interactive queue (one LPUSH); returns the queue's name.

    Raises redis.RedisError when Redis cannot take it."""
    queue, message = single_message(job_id=job_id, kind=kind, request_id=request_id)
    client.lpush(queue, message)
    return queue
