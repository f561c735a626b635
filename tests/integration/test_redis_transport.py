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
