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

import os
import socket
import uuid
from collections.abc import Callable

import redis

#: hash: kombu delivery tag → owner of the unacked message (kept with kombu's `unacked` hash)
OWNERS = "genq:unacked:owner"
#: sorted set: owner → the time of its last beat (Redis's clock)
CONSUMERS = "genq:consumers"
#: this process as an owner: host, pid, and a random part (a pid can come back after a restart)
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def beat(client: redis.Redis, *, owner: str = OWNER, ago_s: float = 0) -> None:
    """Say that this process is alive (`ago_s`: as of that long ago, for tests)."""
    client.zadd(CONSUMERS, {owner: redis_now(client) - ago_s})


def dead_owners(client: redis.Redis, *, dead_after_s: float) -> tuple[set[str], float]:
    """The owners silent for `dead_after_s`, and the cut-off (for `give_back`)."""
    ceiling = redis_now(client) - dead_after_s
    return {owner.decode() for owner in client.zrangebyscore(CONSUMERS, "-inf", ceiling)}, ceiling


def give_back(
    client: redis.Redis,
    dead: set[str],
    ceiling: float,
    restore_by_tag: Callable[[str], None],
) -> int:
    """Give back every unacked message of the `dead` owners with `restore_by_tag` (kombu's: back
    to its queue, out of the unacked indices and `OWNERS`); then forget the owners still silent
    (one that beat meanwhile stays: it lives, and its duplicates are harmless). How many."""
    tags = {tag for tag, owner in client.hscan_iter(OWNERS, count=1000) if owner.decode() in dead}
    for tag in tags:
        restore_by_tag(tag.decode())
    client.zremrangebyscore(CONSUMERS, "-inf", ceiling)
    return len(tags)
