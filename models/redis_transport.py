"""kombu's Redis transport, with one Redis client per connection pool instead of one per command.

kombu builds a new `redis.Redis` for every publish, ack and event it sends (`conn_or_acquire`),
and with redis-py 8 that object costs ~0.17 ms of CPU to build: about three per job in a worker
and one per submit in the API. A client is only a handle on its connection pool and is safe to
share between threads (redis-py), so the channel keeps one per pool.

`InteractiveFirst` is the order a worker polls its queues in (the `queue_order_strategy`
transport option): kombu sends one `BRPOP` over every queue's lists, which answers from the first
non-empty one, so listing the interactive queues before the batch lanes serves them first.

`QoS` also records which process holds each unacked message (models/reserved.py), so the
sweeper gives a dead worker's messages back at once instead of after the visibility timeout.

`install()` registers it as kombu's `redis` transport, so broker URLs stay `redis://…` (Flower
tells brokers apart by the URL's scheme).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import kombu.transport
import redis
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps
from kombu.utils.scheduling import priority_cycle

from models.queue import is_batch_queue
from models.reserved import CONSUMERS, OWNER, OWNERS

#: the `queue_order_strategy` transport option naming the cycle below
QUEUE_ORDER = f"{__name__}:InteractiveFirst"


class InteractiveFirst(priority_cycle):
    """kombu's fixed-order cycle with every batch lane after every interactive queue, whatever
    the order the queues were given in (`-Q text.batch,text` still serves `text` first)."""

    def consume(self, n: int) -> list[str]:
        return sorted(self.items[:n], key=is_batch_queue)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with this process recorded as each unacked message's owner in the
    same transaction that records the message (and a first beat with its first message, until
    worker/liveness.py beats). genq sets no kombu `global_keyprefix`: the owner keys are read
    unprefixed by the sweeper."""

    _announced = False

    def append(self, message, delivery_tag) -> None:
        """kombu's `append` (its two commands, then the in-process bookkeeping), with the owner
        in the same transaction: kombu's own builds its pipeline inside and executes it."""
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, raw)
            pipe.hset(OWNERS, delivery_tag, OWNER)
            if not QoS._announced:  # this host's clock, only until the first real beat
                pipe.zadd(CONSUMERS, {OWNER: time.time()}, nx=True)
            pipe.execute()
            QoS._announced = True
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag, pipe=None):
        """Ack, reject and restore all come through here: the owner goes with the message."""
        return super()._remove_from_indices(delivery_tag, pipe).hdel(OWNERS, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:  # a new pool after errors
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make `redis://` broker URLs use this transport in this process (kombu's alias table).

    kombu also caches each alias's class on first use, so a connection made before this call
    would keep the stock transport: drop that cached entry too.
    """
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    getattr(kombu.transport, "_transport_cache", {}).pop("redis", None)
