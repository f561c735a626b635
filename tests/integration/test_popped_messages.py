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
from sqlmodel import select

from models import redis_transport
from models.bulk_publish import push_batch_jobs
from models.db import get_engine, session_scope, utcnow
from models.jobs import QUEUED, Job, aware
from models.popped import LOOK_AHEAD, MARGIN_S, UNCHECKED, lost_in_pop, note_death
from models.queue import BATCH_QUEUE_BY_KIND, FINALIZE_TASK, TEXT_QUEUE
from models.reserved import CONSUMERS, GivenBack, job_of_message
from tests.integration.test_batch_run import make_batch
from tests.integration.test_fault_tolerance import submit
from worker.sweeper import Sweeper

TEXT = Queue(TEXT_QUEUE, Exchange(TEXT_QUEUE), TEXT_QUEUE)


@pytest.fixture
def transport(monkeypatch, settings):
    redis_transport.install()
    monkeypatch.setattr(redis_transport.QoS, "_announced", False)
    yield
    client_of(settings).delete(CONSUMERS)  # this process's first beat, taken by basic_get


def client_of(settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def published(settings, ages_s: dict[str, float]) -> None:
    """Date each job's last publish `ages_s` seconds ago."""
    with session_scope(get_engine(settings.database_url)) as session:
        for job_id, age in ages_s.items():
            session.get(Job, job_id).published_at = utcnow() - timedelta(seconds=age)


def lost(settings) -> list[str]:
    with session_scope(get_engine(settings.database_url)) as session:
        return [job_id for job_id, _kind, _batch in lost_in_pop(session, client_of(settings))]


def in_line(settings, queue: str = TEXT_QUEUE) -> list[str]:
    """The jobs of a queue's messages, front (next to be taken) first."""
    raw = client_of(settings).lrange(queue, 0, -1)
    return [job_of_message(json.loads(m)) for m in reversed(raw)]


def died(settings, ago_s: float = 0) -> None:
    note_death(client_of(settings), ttl_s=300, now=utcnow() - timedelta(seconds=ago_s))


def test_a_popped_job_is_lost_once_its_queue_has_nothing_in_line(client, key, settings, transport):
    # Given four text jobs, and a consumer that popped the first and died before recording it
    popped, held, given_back, waiting = (submit(client, key) for _ in range(4))
    published(settings, dict.fromkeys([popped, held, given_back, waiting], 30))
    client_of(settings).rpop(TEXT_QUEUE)
    died(settings)
    with Connection(settings.redis_url) as conn:
        channel = conn.channel()
        TEXT(channel).declare()
        # a live consumer holds the second unacked
        assert channel.basic_get(TEXT_QUEUE, no_ack=False) is not None
        assert in_line(settings) == [given_back, waiting]
        # While a job waits in line, the queue is busy: nothing is presumed, the death stays noted
        assert lost(settings) == [] and client_of(settings).exists(UNCHECKED)
        # Once the other two were taken, and the third given back (kombu's restore: to the
        # front, marked redelivered), only the popped one is lost: the others are held, or
        # given back and in the queue
        again = channel.basic_get(TEXT_QUEUE, no_ack=False)
        assert channel.basic_get(TEXT_QUEUE, no_ack=False) is not None
        channel.qos.restore_by_tag(again.delivery_tag)
        assert in_line(settings) == [given_back]
        assert lost(settings) == [popped]
    # and every job queue having been looked at, the death is forgotten
    assert not client_of(settings).exists(UNCHECKED) and lost(settings) == []


def test_without_a_death_nothing_is_presumed(client, key, settings, transport):
    popped = submit(client, key)
    published(settings, {popped: 30})
    client_of(settings).rpop(TEXT_QUEUE)  # in some live consumer's hands, as far as is known
    assert lost(settings) == []


def test_jobs_published_after_the_death_was_seen_are_not_its(client, key, settings, transport):
    # Given a death seen 10 s ago, and two jobs whose messages are in no list
    before, just_before, after = submit(client, key), submit(client, key), submit(client, key)
    published(settings, {before: 30, just_before: 10 + MARGIN_S / 2, after: 5})
    client_of(settings).delete(TEXT_QUEUE)
    died(settings, ago_s=10)
    # Then only the one published a margin before the death can have been popped by the dead
    assert lost(settings) == [before]


def test_a_batch_lane_is_looked_at_once_drained(client, key, settings, transport):
    # Given a batch of three queued lines pushed to the text batch lane, the first popped
    engine = get_engine(settings.database_url)
    batch_id, _ = make_batch(engine, [QUEUED] * 3)
    with session_scope(engine) as session:
        lines = list(session.exec(select(Job.id).where(Job.batch_id == batch_id)))
    lines.sort()
    published(settings, dict.fromkeys(lines, 30))
    lane = BATCH_QUEUE_BY_KIND["text"]
    push_batch_jobs(client_of(settings), [(job_id, "text") for job_id in lines])
    client_of(settings).rpop(lane)
    died(settings)
    # the lane still holds two lines: busy
    assert lost(settings) == []
    # both drained (the rest of the batch ran): the popped line is lost, the others are not queued
    client_of(settings).delete(lane)
    with session_scope(engine) as session:
        for job_id in lines[1:]:
            session.get(Job, job_id).status = "succeeded"
    assert lost(settings) == [lines[0]]


def test_other_tasks_messages_do_not_make_a_queue_busy(client, key, settings, transport):
    popped = submit(client, key)
    published(settings, {popped: 30})
    client_of(settings).rpop(TEXT_QUEUE)
    finalize = {"headers": {"task": FINALIZE_TASK}, "body": "", "properties": {}}
    client_of(settings).lpush(TEXT_QUEUE, json.dumps(finalize))
    died(settings)
    assert lost(settings) == [popped]


def test_more_given_back_messages_than_are_read_make_a_queue_busy(client, key, settings, transport):
    # Given a job popped and lost, and more given-back messages in line than the sweeper reads
    popped = submit(client, key)
    published(settings, {popped: 60})
    client_of(settings).rpop(TEXT_QUEUE)
    crowd = [submit(client, key) for _ in range(LOOK_AHEAD + 1)]
    published(settings, dict.fromkeys(crowd, 30))
    with Connection(settings.redis_url) as conn:
        channel = conn.channel()
        TEXT(channel).declare()
        taken = [channel.basic_get(TEXT_QUEUE, no_ack=False) for _ in crowd]
        for message in taken:
            channel.qos.restore_by_tag(message.delivery_tag)
    died(settings)
    # Then the queue is not known to be idle: left to a later sweep
    assert lost(settings) == []


def test_the_sweeper_notes_a_death_and_looks_until_the_queues_drain(
    client, key, settings, transport
):
    engine = get_engine(settings.database_url)
    popped, waiting = submit(client, key), submit(client, key)
    published(settings, {popped: 30, waiting: 20})
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
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and not client_of(settings).exists(UNCHECKED)
    # one died while `waiting` is still in line: noted, not yet looked for
    deaths.append(GivenBack(owners=1))
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and sent == []
    # a later sweep, no new death, the queue drained: the popped one is published again, once
    deaths.append(GivenBack())
    assert client_of(settings).rpop(TEXT_QUEUE)  # `waiting`, taken by a consumer that ran it
    with session_scope(engine) as session:
        session.get(Job, waiting).status = "succeeded"
    assert sweeper.sweep_once()["lost_in_pop"] == 1 and sent == [popped]
    with session_scope(engine) as session:
        assert aware(session.get(Job, popped).published_at) > utcnow() - timedelta(seconds=5)
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and sent == [popped]
    assert not client_of(settings).exists(UNCHECKED)


class DeathDuringCheck(redis.Redis):
    """Another sweeper notes a new death while this one is reading the unacked hash."""

    def hvals(self, name):
        note_death(self, ttl_s=300)
        return super().hvals(name)


def test_a_death_noted_during_a_check_outlives_it(settings):
    client = client_of(settings)
    note_death(client, ttl_s=300, now=utcnow() - timedelta(seconds=10))
    first = client.get(UNCHECKED)
    racing = DeathDuringCheck.from_url(settings.redis_url)
    with session_scope(get_engine(settings.database_url)) as session:
        assert lost_in_pop(session, racing) == []  # every queue idle: it would forget its note
    assert client.exists(UNCHECKED) and client.get(UNCHECKED) != first
    assert 0 < client.ttl(UNCHECKED) <= 300
