"""Which worker process holds which unacked broker message, so a dead one's go back at once.

kombu's Redis transport keeps every message a consumer took but has not acked in its `unacked`
hash, and gives it back to its queue only after the visibility timeout (an hour: it must exceed
any job's run time). A worker killed while it held messages it had not yet started (received,
not yet claimed, or waiting for their countdown) left those jobs queued until the sweeper
presumed their message lost (`GENQ_REDISPATCH_AFTER_S`, five minutes; a batch job only after its
lane drained). Here each consumer process records itself as the owner of each message it takes
(`OWNERS`, beside kombu's own bookkeeping, in the same transaction) and beats in `CONSUMERS`
while alive; the sweeper gives back, with kombu's own restore, every message whose owner has
not beaten for a lease. A message given back while its owner lived (a stall longer than a
lease) is a duplicate, and duplicates are harmless: the claim lets one copy run a job, and a
restored message keeps its countdown.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

import redis

#: hash: kombu delivery tag → owner of the unacked message (kept with kombu's `unacked` hash)
OWNERS = "genq:unacked:owner"
#: sorted set: owner → the time of its last beat
CONSUMERS = "genq:consumers"
#: this process as an owner: host, pid, and a random part (a pid can come back after a restart)
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def beat(client: redis.Redis, *, owner: str = OWNER, now: float | None = None) -> None:
    """Say that this process is alive (every sweep interval, from its sweeper thread)."""
    client.zadd(CONSUMERS, {owner: time.time() if now is None else now})


def restore_dead(
    client: redis.Redis,
    restore_by_tag: Callable[[str], None],
    *,
    dead_after_s: float,
    now: float | None = None,
) -> int:
    """Give back every unacked message whose owner has not beaten for `dead_after_s`, with
    `restore_by_tag` (kombu's: back to the head of its queue, out of the unacked indices); the
    dead owners are forgotten. Returns how many messages went back."""
    ceiling = (time.time() if now is None else now) - dead_after_s
    dead = {owner.decode() for owner in client.zrangebyscore(CONSUMERS, "-inf", ceiling)}
    if not dead:
        return 0
    restored = 0
    for tag, owner in client.hscan_iter(OWNERS, count=1000):
        if owner.decode() in dead:
            restore_by_tag(tag.decode())  # drops it from OWNERS too (redis_transport.QoS)
            restored += 1
    client.zrem(CONSUMERS, *dead)
    return restored
