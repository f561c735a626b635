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

`Channel` follows each `BRPOP` that answers with one `RPOP` of up to `fetch_batch` - 1 more
messages from the same list, as many as the prefetch limit still allows, sent in the round trip
that records the first message as unacked; the others are recorded in one more round trip, and
only then is any of them delivered. kombu takes one message per `BRPOP` and then
records it with its own command: two round trips in the consumer thread per message, each giving
up the GIL, and under a thousand busy threads each taking milliseconds to get it back; that bound
how fast a worker started a burst of queued jobs (issue 17). What a worker reserves is unchanged:
never more than its prefetch limit, and never a message of another list.

`install()` registers it as kombu's `redis` transport, so broker URLs stay `redis://…` (Flower
tells brokers apart by the URL's scheme).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty

import kombu.transport
import redis
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.scheduling import priority_cycle
from redis.commands.core import Script
from redis.exceptions import NoScriptError

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

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: tags recorded in Redis by `record` ahead of their delivery (their `append` is local)
        self._recorded: set[str] = set()

    def append(self, message, delivery_tag) -> None:
        """kombu's `append` (its two writes, then the in-process bookkeeping), with the owner
        in the same script; only the bookkeeping for a message `record` wrote already."""
        if delivery_tag not in self._recorded:
            self.record([message._raw])
        self._recorded.discard(delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)

    def record(
        self, payloads: list[dict], *, then_pop: tuple[bytes, int] = (b"", 0)
    ) -> list[bytes]:
        """Popped messages into the unacked hash and index with their owner (`APPEND_LUA`, one
        per message) before any of them is delivered, in one round trip. `then_pop` (a list's
        key, a count) pops up to that many more off the list in the same round trip, after the
        records; they are returned, not yet recorded. An idle queue so costs no extra round
        trip: the pop answers nothing in the round trip the first message's record needed."""
        keys = [self.unacked_index_key, self.unacked_key, OWNERS, CONSUMERS]
        announce = "0" if QoS._announced else "1"  # this host's clock, until the first beat
        stamp = repr(time.time())
        key, count = then_pop
        appends = []
        for payload in payloads:
            properties = payload["properties"]
            delivery = properties["delivery_info"]
            raw = dumps([payload, delivery["exchange"], delivery["routing_key"]])
            appends.append([properties["delivery_tag"], stamp, raw, OWNER, announce])
        popped: list[bytes] = []
        with self.channel.conn_or_acquire() as client:
            if len(appends) == 1 and count <= 0:
                _APPEND(keys, appends[0], client)
            else:
                popped = _recorded_then_popped(client, keys, appends, key, count)
        QoS._announced = True
        self._recorded.update(args[0] for args in appends)
        return popped

    def ack(self, delivery_tag) -> None:
        """kombu's `ack` (out of Redis, then the in-process bookkeeping), as one script."""
        with self.channel.conn_or_acquire() as client:
            _ACK([self.unacked_index_key, self.unacked_key, OWNERS], [delivery_tag], client)
        virtual.QoS.ack(self, delivery_tag)

    def _remove_from_indices(self, delivery_tag, pipe=None):
        """Reject and restore come through here: the owner goes with the message."""
        return super()._remove_from_indices(delivery_tag, pipe).hdel(OWNERS, delivery_tag)


def _recorded_then_popped(
    client: redis.Redis, keys: list[str], appends: list[list], key: bytes, count: int
) -> list[bytes]:
    """`APPEND_LUA` for each message, then an `RPOP` of `count` off `key` when count > 0, in one
    pipeline; what the pop took. `EVALSHA` by hand: a pipeline given the script object asks the
    server whether it knows it first (`SCRIPT EXISTS`, a round trip every time). A server that
    does not (restarted) gets the refused records again through the script object, which
    loads it: a record is idempotent, and what the pop took is kept."""
    pipe = client.pipeline(transaction=False)
    for args in appends:
        pipe.evalsha(_APPEND.sha, len(keys), *keys, *args)
    if count > 0:
        pipe.rpop(key, count)
    replies = pipe.execute(raise_on_error=False)
    popped = (replies.pop() or []) if count > 0 else []
    for args, reply in zip(appends, replies, strict=True):
        if isinstance(reply, NoScriptError):
            _APPEND(keys, args, client)
        elif isinstance(reply, Exception):
            raise reply
    return popped


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: redis.Redis | None = None
    #: the most messages one `BRPOP` answer delivers (transport option; 1 is kombu's own read)
    fetch_batch = 1
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "fetch_batch")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:  # kombu would prefix only a script's first key
            raise ValueError(
                "genq's Redis transport does not support the global_keyprefix transport "
                "option: use a Redis database of its own instead"
            )

    def _brpop_read(self, **options) -> bool:
        """kombu's read of a `BRPOP` answer; its message's record then pops more of the same
        list, as many as the prefetch limit allows, which are recorded too; then all are
        delivered, in the order they were queued."""
        if self.fetch_batch <= 1 or self._closing:  # closing: read the pending answer alone
            return super()._brpop_read(**options)
        try:
            try:
                answer = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects
                raise
            if not answer:
                raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        key, first = answer
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        payloads = [loads(bytes_to_str(first))]
        room = self.qos.can_consume_max_estimate()  # counts the message just taken
        wanted = min(self.fetch_batch, self.fetch_batch if room is None else room) - 1
        more = [
            loads(bytes_to_str(item)) for item in self.qos.record(payloads, then_pop=(key, wanted))
        ]
        if more:
            self.qos.record(more)
        for payload in payloads + more:
            self.connection._deliver(payload, queue)
        return True

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
