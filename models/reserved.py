"""Which worker process holds which unacked broker message, so a dead one's go back at once.

kombu's Redis transport keeps every message a consumer took but has not acked in its `unacked`
hash, and gives it back to its queue only after the visibility timeout (an hour: it must exceed
any job's run time). A worker killed while it held messages it had not yet started (received,
not yet claimed, or waiting for their countdown) left those jobs queued until the sweeper
presumed their message lost (`GENQ_REDISPATCH_AFTER_S`, five minutes; a batch job only after its
lane drained). Here each consumer process records itself as the owner of each message it takes
(`OWNERS`, beside kombu's own bookkeeping, in the same transaction) and beats in `CONSUMERS`
while alive (worker/liveness.py); the sweeper gives back, with kombu's own restore, every
message whose owner has not beaten for a lease. Beats and the cut-off are on Redis's clock, so
hosts' clocks need not agree. A message given back while its owner lived (a stall longer than a
lease) is a duplicate, and duplicates are harmless: the claim lets one copy run a job, and a
restored message keeps its countdown.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from models.queue import TASK_BY_KIND

#: hash: kombu delivery tag → owner of the unacked message (kept with kombu's `unacked` hash)
OWNERS = "genq:unacked:owner"
#: sorted set: owner → the time of its last beat (Redis's clock)
CONSUMERS = "genq:consumers"
#: set: the owners that stopped cleanly, until the sweeper forgets them
STOPPED = "genq:consumers:stopped"
#: this process as an owner: host, pid, and a random part (a pid can come back after a restart)
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def beat(client: redis.Redis, *, owner: str = OWNER, ago_s: float = 0) -> None:
    """Say that this process is alive (`ago_s`: as of that long ago, for tests)."""
    client.zadd(CONSUMERS, {owner: redis_now(client) - ago_s})


def mark_stopped(client: redis.Redis, *, owner: str = OWNER) -> None:
    """Say that this process stopped cleanly: kombu gave back what it held at close, the message
    of a pop still in flight included (its channel reads the pending reply first)."""
    client.sadd(STOPPED, owner)


def killed(client: redis.Redis, dead: set[str]) -> set[str]:
    """Of these dead owners, those that did not stop cleanly."""
    return dead - {owner.decode() for owner in client.smembers(STOPPED)} if dead else set()


def dead_owners(client: redis.Redis, *, dead_after_s: float) -> tuple[set[str], float]:
    """The owners silent for `dead_after_s`, and the cut-off (for `give_back`)."""
    ceiling = redis_now(client) - dead_after_s
    return {owner.decode() for owner in client.zrangebyscore(CONSUMERS, "-inf", ceiling)}, ceiling


#: kombu's own keys (its Redis transport's defaults, which genq does not change)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
JOB_TASKS = frozenset(TASK_BY_KIND.values())


def job_of(stored: bytes | None) -> str | None:
    """The job id a stored unacked message runs (`[message, exchange, routing key]`, Celery's
    protocol 2), or None for another task (a webhook delivery, a batch's finalize)."""
    if stored is None:
        return None
    return job_of_message(json.loads(stored)[0])


def job_of_message(message: dict) -> str | None:
    """The job id a Celery message (protocol 2, as kombu stores it) runs, or None."""
    if message.get("headers", {}).get("task") not in JOB_TASKS:
        return None
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)[0][0]


def give_back(
    client: redis.Redis,
    dead: set[str],
    ceiling: float,
    *,
    restore_by_tag: Callable[[str], None],
    drop_by_tag: Callable[[str], None],
    still_waiting: Callable[[dict[str, datetime]], set[str]],
) -> int:
    """Give back the unacked messages of the `dead` owners; then forget the owners still silent
    (one that beat meanwhile stays: it lives, and its duplicates are harmless). How many.

    A job's message goes back (kombu's `restore_by_tag`: to its queue, out of the unacked
    indices and `OWNERS`) only if its job is still waiting for this very message
    (`still_waiting`: job id → when the message was taken); otherwise it is dropped from the
    indices: the job runs or ran (its lease covers it), or a newer message was published since
    (a retry's countdown message: this older one would run it before its Retry-After).
    Other tasks' messages always go back."""
    tags = sorted(
        {tag for tag, owner in client.hscan_iter(OWNERS, count=1000) if owner.decode() in dead}
    )
    if tags:
        stored = client.hmget(UNACKED, tags)
        taken = client.zmscore(UNACKED_INDEX, tags)
        jobs = {tag: job_of(message) for tag, message in zip(tags, stored, strict=True)}
        waiting = still_waiting(
            {
                job: datetime.fromtimestamp(at or 0, UTC)
                for (tag, job), at in zip(jobs.items(), taken, strict=True)
                if job is not None
            }
        )
        for tag, job in jobs.items():
            if job is None or job in waiting:
                restore_by_tag(tag.decode())
            else:
                drop_by_tag(tag.decode())
    client.zremrangebyscore(CONSUMERS, "-inf", ceiling)
    if dead:
        client.srem(STOPPED, *dead)
    return len(tags)
