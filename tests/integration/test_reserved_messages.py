"""A dead consumer's unacked messages go back at once (models/reserved.py), on real Redis
through genq's kombu transport: kombu alone keeps them for the visibility timeout (an hour)."""

from __future__ import annotations

import json
import time

import pytest
import redis
from kombu import Connection, Exchange, Queue
from structlog.testing import capture_logs

from models import redis_transport, reserved
from models.bulk_publish import push_job
from models.db import get_engine
from models.queue import TEXT_QUEUE
from worker.liveness import Liveness
from worker.sweeper import Sweeper

QUEUE = Queue("genq-reserved-test", Exchange("genq-reserved-test"), "r")


@pytest.fixture
def broker(clean_redis, monkeypatch) -> str:
    redis_transport.install()
    monkeypatch.setattr(redis_transport.QoS, "_announced", False)
    with Connection(clean_redis) as conn, conn.Producer() as producer:
        for i in range(4):
            producer.publish({"n": i}, exchange=QUEUE.exchange, routing_key="r", declare=[QUEUE])
    return clean_redis


def take(conn: Connection, count: int) -> list:
    """Take `count` messages without acking them, as a worker's consumer does."""
    channel = conn.channel()
    QUEUE(channel).declare()
    return [channel.basic_get(QUEUE.name, no_ack=False) for _ in range(count)]


def received_again(url: str) -> list[tuple[int, bool]]:
    with Connection(url) as conn:
        channel = conn.channel()
        messages = iter(lambda: channel.basic_get(QUEUE.name, no_ack=True), None)
        return sorted((m.payload["n"], m.delivery_info.get("redelivered", False)) for m in messages)


def restore(url: str, *, dead_after_s: float = 10, waiting=set) -> int:
    """What the sweeper does (worker/tasks.py `restore_reserved`), on this test's broker;
    `waiting`: which of the given jobs still wait for their message."""
    client = redis.Redis.from_url(url)
    dead, ceiling = reserved.dead_owners(client, dead_after_s=dead_after_s)
    with Connection(url) as conn:
        qos = conn.default_channel.qos
        return reserved.give_back(
            client,
            dead,
            ceiling,
            restore_by_tag=qos.restore_by_tag,
            drop_by_tag=lambda tag: qos._remove_from_indices(tag).execute(),
            still_waiting=lambda taken: waiting(taken),
        )


def test_each_taken_message_names_its_owner_until_acked(broker):
    client = redis.Redis.from_url(broker)
    with Connection(broker) as conn:
        taken = take(conn, 3)
        owners = client.hgetall(reserved.OWNERS)
        assert sorted(owners) == sorted(m.delivery_tag.encode() for m in taken)
        assert set(owners.values()) == {reserved.OWNER.encode()}
        assert client.zscore(reserved.CONSUMERS, reserved.OWNER)  # its first beat
        taken[0].ack()
        taken[1].reject(requeue=True)
        assert list(client.hgetall(reserved.OWNERS)) == [taken[2].delivery_tag.encode()]
        assert client.hlen("unacked") == 1  # kombu's own record, kept in step
        assert client.zcard("unacked_index") == 1


def test_append_and_ack_survive_a_server_that_lost_their_scripts(broker):
    """They are scripts (EVALSHA): after a restart (SCRIPT FLUSH here) redis-py loads them
    again, and the message's record, index and owner still come and go together."""
    client = redis.Redis.from_url(broker)
    with Connection(broker) as conn:
        first = take(conn, 1)[0]
        client.script_flush()
        second = take(conn, 1)[0]
        assert client.hlen("unacked") == client.zcard("unacked_index") == 2
        client.script_flush()
        first.ack()
        second.ack()
    assert client.hlen("unacked") == client.zcard("unacked_index") == 0
    assert client.hlen(reserved.OWNERS) == 0


def test_a_silent_owners_messages_go_back_to_their_queue_once(broker):
    client = redis.Redis.from_url(broker)
    with Connection(broker) as conn:
        take(conn, 3)
        assert restore(broker) == 0  # it beat just now: alive, kept
        assert client.hlen("unacked") == 3
        # the process is gone: its last beat is older than dead_after_s
        reserved.beat(client, ago_s=60)
        assert restore(broker) == 3
    assert client.hlen(reserved.OWNERS) == 0 and client.hlen("unacked") == 0
    assert client.zscore(reserved.CONSUMERS, reserved.OWNER) is None  # forgotten
    again = received_again(broker)
    assert again == [(0, True), (1, True), (2, True), (3, False)]  # the fourth was never taken
    reserved.beat(client, ago_s=60)
    assert restore(broker) == 0  # nothing left to give back


def test_only_the_dead_owners_messages_go_back(broker, monkeypatch):
    client = redis.Redis.from_url(broker)
    # kept open: a connection closed cleanly gives its messages back itself (kombu)
    with Connection(broker) as dead_conn:
        take(dead_conn, 2)
        reserved.beat(client, ago_s=60)  # this process's owner fell silent
        monkeypatch.setattr(redis_transport, "OWNER", "other-host:7:live")
        monkeypatch.setattr(redis_transport.QoS, "_announced", False)
        with Connection(broker) as live_conn:
            kept = take(live_conn, 1)
            assert restore(broker) == 2
            assert client.hgetall(reserved.OWNERS) == {
                kept[0].delivery_tag.encode(): b"other-host:7:live"
            }
            assert [n for n, _ in received_again(broker)] == [0, 1, 3]


def test_an_owner_that_beats_during_the_give_back_stays_alive(broker):
    client = redis.Redis.from_url(broker)
    reserved.beat(client, owner="stalled:1:a", ago_s=60)
    dead, ceiling = reserved.dead_owners(client, dead_after_s=10)
    assert dead == {"stalled:1:a"}
    reserved.beat(client, owner="stalled:1:a")  # it was only slow
    given = reserved.give_back(
        client, dead, ceiling, restore_by_tag=print, drop_by_tag=print, still_waiting=set
    )
    assert given == 0
    assert client.zscore(reserved.CONSUMERS, "stalled:1:a") is not None


def test_a_failing_give_back_does_not_stop_the_sweep(broker, settings):
    def unreachable() -> int:
        raise redis.ConnectionError("pool exhausted")

    sweeper = Sweeper(
        get_engine(settings.database_url),
        redis.Redis.from_url(broker),
        lambda *args: None,
        interval_s=1,
        redispatch_after_s=300,
        reserved=unreachable,
    )
    with capture_logs() as logs:
        assert sweeper.sweep_once()["restored"] == 0
    assert [line["event"] for line in logs][:1] == ["sweeper.restore_failed"]
    sweeper.reserved = lambda: 2
    assert sweeper.sweep_once()["restored"] == 2


def test_the_liveness_thread_beats_on_redis_time_until_stopped(broker):
    client = redis.Redis.from_url(broker)
    client.delete(reserved.CONSUMERS)
    liveness = Liveness(client, interval_s=0.05)
    liveness.start()
    deadline = time.monotonic() + 10
    while (first := client.zscore(reserved.CONSUMERS, reserved.OWNER)) is None:
        assert time.monotonic() < deadline, "never beat"
        time.sleep(0.01)
    while client.zscore(reserved.CONSUMERS, reserved.OWNER) == first:
        assert time.monotonic() < deadline, "beat only once"
        time.sleep(0.01)
    liveness.stop()
    liveness._thread.join(timeout=5)
    assert not liveness._thread.is_alive()
    assert abs(client.zscore(reserved.CONSUMERS, reserved.OWNER) - reserved.redis_now(client)) < 5
    # it says it stopped cleanly, until the sweeper forgets it
    assert client.sismember(reserved.STOPPED, reserved.OWNER)
    reserved.beat(client, ago_s=60)
    assert restore(broker) == 0
    assert not client.sismember(reserved.STOPPED, reserved.OWNER)


def test_a_jobs_message_goes_back_only_while_its_job_waits_for_it(clean_redis):
    """A job message of a dead owner: given back if its job still waits for it, dropped when the
    job runs, ran, or was published again since (a retry's countdown message)."""
    redis_transport.install()
    client = redis.Redis.from_url(clean_redis)
    for job_id in ("waits", "ran"):
        push_job(client, job_id=job_id, kind="text")
    with Connection(clean_redis) as conn:
        channel = conn.channel()
        Queue(TEXT_QUEUE, Exchange(TEXT_QUEUE), TEXT_QUEUE)(channel).declare()
        taken = [channel.basic_get(TEXT_QUEUE, no_ack=False) for _ in range(2)]
        assert sorted(reserved.job_of(m) for m in client.hvals(reserved.UNACKED)) == [
            "ran",
            "waits",
        ]
        asked = {}
        reserved.beat(client, ago_s=60)
        assert restore(clean_redis, waiting=lambda t: asked.update(t) or {"waits"}) == 2
        assert set(asked) == {"waits", "ran"}
        assert all(at.tzinfo and abs(at.timestamp() - time.time()) < 60 for at in asked.values())
        assert client.hlen(reserved.UNACKED) == 0 and client.hlen(reserved.OWNERS) == 0
        again = [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(TEXT_QUEUE, 0, -1)]
        assert again == ["['waits']"]
        assert len(taken) == 2


def test_other_tasks_messages_are_not_jobs():
    assert reserved.job_of(None) is None
    message = {"headers": {"task": "genq.deliver_webhook"}, "body": "", "properties": {}}
    assert reserved.job_of(json.dumps([message, "webhooks", "webhooks"]).encode()) is None
