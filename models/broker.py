"""Queue depth read straight from Redis, as Celery's Redis transport (kombu) lays queues out.

Shared by the API (`GET /v1/stats`) and the workers (the `genq_queue_depth` gauge), so both report
the same number an autoscaler such as KEDA reads with `LLEN`.
"""

from __future__ import annotations

import redis

from models.queue import ALL_QUEUES

#: the interactive queues and the batch lanes
QUEUES = ALL_QUEUES
#: kombu keeps one Redis list per priority step; priority 0 is the bare queue name
PRIORITY_STEPS = (0, 3, 6, 9)
#: kombu's separator between a queue name and its priority step
PRIORITY_SEP = "\x06\x16"
#: a stats call or a scrape must not hang on a sick Redis
REDIS_TIMEOUT_S = 2.0


def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts, for monitoring reads only."""
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def priority_keys(queue: str) -> list[str]:
    """The Redis lists that hold one Celery queue's waiting messages."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting per queue (not yet taken by a worker); raises redis.RedisError."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in priority_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    per_queue = len(PRIORITY_STEPS)
    return {
        queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(queues)
    }
