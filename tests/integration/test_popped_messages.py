"""A message a dead consumer popped but had not recorded is found and published again
(models/popped.py): real Redis through genq's kombu transport, real databases, the API's own
publish. The pop is kombu's `RPOP` run by hand: the state a worker killed between its `BRPOP`
and its `QoS.append` leaves."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
from kombu import Connection, Exchange, Queue

from models import redis_transport
from models.db import get_engine, session_scope, utcnow
from models.jobs import Job
from models.popped import LOOK_AHEAD, MARGIN_S, lost_in_pop
from models.queue import TEXT_QUEUE
from models.reserved import GivenBack, job_of_message
from tests.integration.test_fault_tolerance import submit
from worker.sweeper import Sweeper

TEXT = Queue(TEXT_QUEUE, Exchange(TEXT_QUEUE), TEXT_QUEUE)


@pytest.fixture
def transport(monkeypatch):
    redis_transport.install()
    monkeypatch.setattr(redis_transport.QoS, "_announced", False)


def published(settings, ages_s: dict[str, float]) -> None:
    """Date each job's last publish `ages_s` seconds ago."""
    with session_scope(get_engine(settings.database_url)) as session:
        for job_id, age in ages_s.items():
            session.get(Job, job_id).published_at = utcnow() - timedelta(seconds=age)


def lost(settings) -> list[str]:
    with session_scope(get_engine(settings.database_url)) as session:
        return [job_id for job_id, _kind, _batch in lost_in_pop(session, client_of(settings))]


def client_of(settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def in_line(settings) -> list[str]:
    """The jobs of the text queue's messages, front (next to be taken) first."""
    raw = client_of(settings).lrange(TEXT_QUEUE, 0, -1)
    return [job_of_message(json.loads(m)) for m in reversed(raw)]


def test_only_the_job_popped_and_never_recorded_is_lost(client, key, settings, transport):
    # Given five text jobs published in this order, 10 s apart
    popped, held, given_back, first, behind = (submit(client, key) for _ in range(5))
    published(settings, {popped: 50, held: 40, given_back: 30, first: 20, behind: 10})
    assert in_line(settings) == [popped, held, given_back, first, behind]
    with Connection(settings.redis_url) as conn:
        channel = conn.channel()
        TEXT(channel).declare()
        # a consumer popped the first and died before recording it
        client_of(settings).rpop(TEXT_QUEUE)
        # a live consumer holds the second unacked
        assert channel.basic_get(TEXT_QUEUE, no_ack=False) is not None
        # the third was taken and given back (kombu's restore: to the front, redelivered)
        again = channel.basic_get(TEXT_QUEUE, no_ack=False)
        channel.qos.restore_by_tag(again.delivery_tag)
        assert in_line(settings) == [given_back, first, behind]
        # Then only the popped one is lost: the others are held, given back, or in line
        assert lost(settings) == [popped]


def test_a_job_published_within_the_margin_before_the_first_in_line_is_not_lost(
    client, key, settings, transport
):
    # Given two jobs whose publish times are closer than the clocks can be trusted
    earlier, first = submit(client, key), submit(client, key)
    published(settings, {earlier: 20 + MARGIN_S / 2, first: 20})
    client_of(settings).rpop(TEXT_QUEUE)  # `earlier` was taken and is recorded nowhere
    # Then it cannot be told from a message still on its way: left to the presumption of loss
    assert lost(settings) == []
    published(settings, {earlier: 20 + MARGIN_S * 2})
    assert lost(settings) == [earlier]


def test_an_empty_queue_means_every_older_queued_job_left_it(client, key, settings, transport):
    # Given two jobs whose messages are both gone, one published just now
    old, _fresh = submit(client, key), submit(client, key)
    published(settings, {old: 30})
    client_of(settings).delete(TEXT_QUEUE)
    # Then the old one is lost, and the one published a moment ago may still be on its way
    assert lost(settings) == [old]


def test_a_front_of_more_given_back_messages_than_are_read_dates_nothing(
    client, key, settings, transport
):
    # Given a job popped and lost behind more given-back messages than the sweeper reads
    lost_job = submit(client, key)
    published(settings, {lost_job: 60})
    client_of(settings).rpop(TEXT_QUEUE)
    crowd = [submit(client, key) for _ in range(LOOK_AHEAD)]
    published(settings, dict.fromkeys(crowd, 30))
    with Connection(settings.redis_url) as conn:
        channel = conn.channel()
        TEXT(channel).declare()
        taken = [channel.basic_get(TEXT_QUEUE, no_ack=False) for _ in crowd]
        for message in taken:
            channel.qos.restore_by_tag(message.delivery_tag)
    # Then the first in line is not known: nothing is presumed lost here
    assert lost(settings) == []


def test_the_sweeper_looks_for_popped_messages_only_after_a_consumer_died(
    client, key, settings, transport
):
    engine = get_engine(settings.database_url)
    popped, first = submit(client, key), submit(client, key)
    published(settings, {popped: 30, first: 10})
    client_of(settings).rpop(TEXT_QUEUE)
    sent: list[str] = []
    deaths = [GivenBack()]
    sweeper = Sweeper(
        engine,
        client_of(settings),
        lambda job_id, kind, _delay, _batch: sent.append(job_id),
        interval_s=1,
        redispatch_after_s=300,
        reserved=lambda: deaths[-1],
    )
    # no consumer died: a popped message is in some live consumer's hands
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and sent == []
    # one died: its popped message is published again, once
    deaths.append(GivenBack(owners=1))
    assert sweeper.sweep_once()["lost_in_pop"] == 1 and sent == [popped]
    with session_scope(engine) as session:
        assert session.get(Job, popped).published_at > session.get(Job, first).published_at
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and sent == [popped]
