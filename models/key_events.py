"""`genq:keys:changed`: the Redis channel that tells every API process a key changed.

An API process serves a key it verified from memory for `GENQ_AUTH_CACHE_S` seconds
(api/key_cache.py). Whatever changes a key row (`genq keys revoke`, `genq keys webhook-secret`)
publishes the key's id here once its change is committed, and every API process, subscribed
from its lifespan, drops that key at once: the next request reads it again. The message
carries the id only, never a secret. Pub/sub delivers at most once: a message published while
Redis or a subscriber is away is lost, so a subscriber that (re)subscribes drops its whole
cache, and the TTL bounds whatever is still missed. No ordinary request touches Redis for this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

CHANNEL = "genq:keys:changed"
#: how long a publisher waits on Redis before it gives up (the change is committed already)
PUBLISH_TIMEOUT_S = 2.0
#: a subscriber that lost Redis tries again after this many seconds, doubling up to the cap
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0

log = logging.getLogger("genq.key_events")


def announce_key_changed(redis_url: str, key_id: str) -> str | None:
    """Publish that `key_id` changed; None once Redis took it, else why it could not.

    A failure never undoes the change: the caller warns, and the API processes' caches
    serve the old state for at most GENQ_AUTH_CACHE_S seconds."""
    client = redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=PUBLISH_TIMEOUT_S,
        socket_timeout=PUBLISH_TIMEOUT_S,
        retry_on_timeout=False,
    )
    try:
        client.publish(CHANNEL, key_id)
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


async def follow_key_changes(
    redis_url: str,
    *,
    changed: Callable[[str], None],
    resubscribed: Callable[[], None],
    settled: asyncio.Event | None = None,
) -> None:
    """Call `changed(key_id)` for every message on the channel, until cancelled.

    `resubscribed()` runs each time the subscription is (re)confirmed, before any message
    after it: changes made while it was away were missed, so the caller forgets them all.
    `settled` is set once the first try subscribed or failed (the API starts serving then)."""
    settled = settled or asyncio.Event()
    delay, warned = RETRY_FIRST_S, False

    def subscribed() -> None:
        nonlocal delay, warned
        resubscribed()
        settled.set()
        if warned:
            log.warning("key changes followed again on %s", CHANNEL)
        delay, warned = RETRY_FIRST_S, False

    while True:
        client = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2, health_check_interval=10
        )
        try:
            await _listen(client, changed=changed, subscribed=subscribed)
        except (redis.RedisError, OSError) as exc:
            if not warned:
                log.warning(
                    "cannot follow key changes on %s (%s); cached keys expire by "
                    "GENQ_AUTH_CACHE_S meanwhile",
                    CHANNEL,
                    type(exc).__name__,
                )
                warned = True
            settled.set()
        finally:
            await client.aclose()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


async def _listen(
    client: aioredis.Redis, *, changed: Callable[[str], None], subscribed: Callable[[], None]
) -> None:
    """Subscribe and hand on every message until the connection fails."""
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(CHANNEL)
        while True:
            message = await pubsub.get_message(timeout=10)
            if message is None:
                continue
            if message["type"] == "subscribe":
                subscribed()
            elif message["type"] == "message":
                changed(message["data"].decode())
