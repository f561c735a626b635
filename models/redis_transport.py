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
from redis.commands.core import Script

from models.queue import is_batch_queue
from models.reserved import CONSUMERS, OWNER, OWNERS

#: the `queue_order_strategy` transport option naming the cycle below
QUEUE_ORDER = f"{__name__}:InteractiveFirst"


class InteractiveFirst(priority_cycle):
    """kombu's fixed-order cycle with every batch lane after every interactive queue, whatever
    the order the queues were given in (`-Q text.batch,text` still serves `text` first)."""

    def consume(self, n: int) -> list[str]:
        return sorted(self.items[:n], key=is_batch_queue)


#: kombu's `append` as one script: the message into the unacked hash and its index, its owner,
#: and (ARGV[5] = "1") this host's first beat. One EVALSHA costs a third less client CPU than
#: kombu's MULTI pipeline (redis-py's transaction machinery parses five replies), and it runs in
#: the worker's consumer thread for every message; a script is atomic like the transaction.
APPEND_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
if ARGV[5] == '1' then redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[4]) end
return 1
"""
#: kombu's ack (out of the index and the hash) and the owner with it, as one script
ACK_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

#: client-free script objects (bytes: no encoder needed); each call names its client, and
#: redis-py loads the script again where a server does not know it (a restart, another server)
_APPEND, _ACK = Script(None, APPEND_LUA.encode()), Script(None, ACK_LUA.encode())


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with this process recorded as each unacked message's owner in the
    same atomic step that records the message (and a first beat with its first message, until
    worker/liveness.py beats). genq sets no kombu `global_keyprefix` (the channel refuses one):
    the owner keys are read unprefixed by the sweeper. A message's append and ack are scripts
    (`APPEND_LUA`, `ACK_LUA`); restores keep kombu's transactions, with the owner removed in
    them."""

    _announced = False

    def append(self, message, delivery_tag) -> None:
        """kombu's `append` (its two writes, then the in-process bookkeeping), with the owner
        in the same script."""
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        keys = [self.unacked_index_key, self.unacked_key, OWNERS, CONSUMERS]
        announce = "0" if QoS._announced else "1"  # this host's clock, until the first beat
        with self.channel.conn_or_acquire() as client:
            _APPEND(keys, [delivery_tag, repr(time.time()), raw, OWNER, announce], client)
        QoS._announced = True
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag) -> None:
        """kombu's `ack` (out of Redis, then the in-process bookkeeping), as one script."""
        with self.channel.conn_or_acquire() as client:
            _ACK([self.unacked_index_key, self.unacked_key, OWNERS], [delivery_tag], client)
        virtual.QoS.ack(self, delivery_tag)

    def _remove_from_indices(self, delivery_tag, pipe=None):
        """Reject and restore come through here: the owner goes with the message."""
        return super()._remove_from_indices(delivery_tag, pipe).hdel(OWNERS, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: redis.Redis | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:  # kombu would prefix only a script's first key
            raise ValueError(
                "genq's Redis transport does not support the global_keyprefix transport "
                "option: use a Redis database of its own instead"
            )

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
