"""genq's kombu Redis transport on real Redis: same messages, one client per pool."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Queue

from models import redis_transport


def test_publishes_and_acks_reuse_one_client_and_every_message_arrives(clean_redis, monkeypatch):
    with Connection(clean_redis) as early:  # kombu resolves (and caches) `redis` before install
        early.transport  # noqa: B018
    redis_transport.install()
    built = []
    original = redis_transport.Channel._create_client

    def counting(self, asynchronous=False):
        built.append(asynchronous)
        return original(self, asynchronous)

    monkeypatch.setattr(redis_transport.Channel, "_create_client", counting)
    queue = Queue("genq-transport-test", Exchange("genq-transport-test"), "t")
    with Connection(clean_redis) as conn:
        assert isinstance(conn.transport, redis_transport.Transport)
        assert conn.as_uri().startswith("redis://")  # Flower reads the scheme
        with conn.Producer() as producer:
            for i in range(50):
                producer.publish(
                    {"n": i}, exchange=queue.exchange, routing_key="t", declare=[queue]
                )
        received = []
        with conn.Consumer(
            queue, callbacks=[lambda body, message: (received.append(body["n"]), message.ack())]
        ):
            while len(received) < 50:
                conn.drain_events(timeout=5)
    assert sorted(received) == list(range(50))
    assert built.count(False) == 1  # kombu alone builds one per publish and per ack: 100
    assert redis.Redis.from_url(clean_redis).llen("genq-transport-test") == 0


def test_a_global_key_prefix_is_refused(clean_redis):
    """The unacked scripts name their keys themselves: kombu's prefixing client would prefix only
    the first, and restores would look elsewhere. Refused at the channel, not half applied."""
    redis_transport.install()
    options = {"global_keyprefix": "app:"}
    with (
        Connection(clean_redis, transport_options=options) as conn,
        pytest.raises(ValueError, match="global_keyprefix"),
    ):
        conn.channel()


def _publish(conn: Connection, queue: Queue, count: int, start: int = 0) -> None:
    with conn.Producer() as producer:
        for i in range(start, start + count):
            producer.publish(
                {"n": i}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
            )


def test_a_batch_read_takes_several_messages_per_brpop_each_recorded_before_delivery(
    clean_redis, monkeypatch
):
    # Given 50 queued messages and a channel that follows each BRPOP with up to 15 more
    redis_transport.install()
    store = redis.Redis.from_url(clean_redis)
    polls = []
    original = redis_transport.Channel._brpop_start
    monkeypatch.setattr(
        redis_transport.Channel,
        "_brpop_start",
        lambda self, timeout=None: (polls.append(1), original(self, timeout))[1],
    )
    queue = Queue("genq-batch-read", Exchange("genq-batch-read"), "b")
    received = []

    def take(body, message):
        # Then each message is in the unacked hash, with this process as its owner, before
        # anyone sees it
        tag = message.delivery_tag
        assert store.hexists("unacked", tag) and store.zscore("unacked_index", tag)
        assert store.hget(redis_transport.OWNERS, tag) == redis_transport.OWNER.encode()
        received.append(body["n"])
        message.ack()

    with Connection(clean_redis, transport_options={"fetch_batch": 16}) as conn:
        _publish(conn, queue, 50)
        with conn.Consumer(queue, callbacks=[take]):
            while len(received) < 50:
                conn.drain_events(timeout=5)
    # and all 50 arrived, in four reads instead of fifty, and none is left unacked
    assert sorted(received) == list(range(50))
    assert len(polls) <= 5
    assert store.llen("genq-batch-read") == 0 and store.hlen("unacked") == 0
    assert store.hlen(redis_transport.OWNERS) == 0


def test_a_batch_read_never_takes_more_than_the_prefetch_limit_allows(clean_redis):
    # Given 50 queued messages, batches of 16, and a consumer allowed 5 unacked messages
    redis_transport.install()
    store = redis.Redis.from_url(clean_redis)
    queue = Queue("genq-batch-prefetch", Exchange("genq-batch-prefetch"), "p")
    held = []
    with Connection(clean_redis, transport_options={"fetch_batch": 16}) as conn:
        _publish(conn, queue, 50)
        with conn.Consumer(
            queue, callbacks=[lambda body, message: held.append(message)], prefetch_count=5
        ):
            conn.drain_events(timeout=5)
            # Then one read takes five: the rest stay queued for other workers
            assert len(held) == 5
            assert store.llen("genq-batch-prefetch") == 45 and store.hlen("unacked") == 5
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.5)  # no room: no BRPOP is even sent
            # and acking two makes room for exactly two more
            for message in held[:2]:
                message.ack()
            conn.drain_events(timeout=5)
            assert len(held) == 7 and store.llen("genq-batch-prefetch") == 43
            assert store.hlen("unacked") == 5


def test_a_batch_read_takes_only_from_the_list_that_answered(clean_redis):
    # Given three messages in each of two queues, consumed together in batches of 16
    redis_transport.install()
    first = Queue("genq-batch-a", Exchange("genq-batch-a"), "a")
    second = Queue("genq-batch-b", Exchange("genq-batch-b"), "b")
    received = []
    with Connection(clean_redis, transport_options={"fetch_batch": 16}) as conn:
        _publish(conn, first, 3)
        _publish(conn, second, 3, start=100)
        with conn.Consumer(
            [first, second],
            callbacks=[lambda body, message: (received.append(body["n"]), message.ack())],
        ):
            conn.drain_events(timeout=5)
            # Then the first read delivers one queue's three messages, not the other's
            assert sorted(received) in ([0, 1, 2], [100, 101, 102])
            while len(received) < 6:
                conn.drain_events(timeout=5)
    assert sorted(received) == [0, 1, 2, 100, 101, 102]


def test_a_worker_takes_as_many_per_read_as_its_setting_says(clean_redis):
    from models.settings import Settings
    from worker.celery_app import make_celery

    for batch in (1, 7):
        app = make_celery(Settings(redis_url=clean_redis, worker_fetch_batch=batch))
        with app.connection_for_read() as conn:
            assert conn.default_channel.fetch_batch == batch
    assert Settings().worker_fetch_batch == 16


def test_a_batch_read_records_its_messages_on_a_server_that_forgot_the_script(clean_redis):
    # Given a channel that recorded messages already, then a server that forgot its scripts
    # (restarted): the batch's records are refused as NOSCRIPT in the pipeline
    redis_transport.install()
    store = redis.Redis.from_url(clean_redis)
    queue = Queue("genq-batch-noscript", Exchange("genq-batch-noscript"), "n")
    received = []

    def take(body, message):
        assert store.hexists("unacked", message.delivery_tag)
        received.append(body["n"])
        message.ack()

    with (
        Connection(clean_redis, transport_options={"fetch_batch": 16}) as conn,
        conn.Consumer(queue, callbacks=[take]),
    ):
        _publish(conn, queue, 5)
        while len(received) < 5:
            conn.drain_events(timeout=5)
        store.script_flush()
        _publish(conn, queue, 20, start=5)
        while len(received) < 25:
            conn.drain_events(timeout=5)
    # Then each was recorded before it was delivered all the same, and nothing was lost
    assert sorted(received) == list(range(25))
    assert store.llen("genq-batch-noscript") == 0 and store.hlen("unacked") == 0
