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
from models.broker import priority_keys
from models.bulk_publish import push_batch_jobs
from models.db import get_engine, session_scope, utcnow
from models.jobs import QUEUED, Job, aware
from models.popped import (
    LOOK_AHEAD,
    UNCHECKED,
    PoppedPolicy,
    forget,
    lost_in_pop,
    note_death,
    note_killed,
)
from models.queue import BATCH_QUEUE_BY_KIND, FINALIZE_TASK, TEXT_QUEUE
from models.reserved import CONSUMERS, STOPPED, job_of_message, mark_stopped
from tests.integration.test_batch_run import make_batch
from tests.integration.test_fault_tolerance import submit
from worker.sweeper import Sweeper

TEXT = Queue(TEXT_QUEUE, Exchange(TEXT_QUEUE), TEXT_QUEUE)
MARGIN_S = 1.0
POLICY = PoppedPolicy(margin_s=MARGIN_S, countdown_max_s=60)


@pytest.fixture
def transport(monkeypatch, settings):
    redis_transport.install()
    monkeypatch.setattr(redis_transport.QoS, "_announced", False)
    yield
    client_of(settings).delete(CONSUMERS, STOPPED)  # this process's first beat (basic_get)


def client_of(settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def published(settings, ages_s: dict[str, float]) -> None:
    """Date each job's last publish `ages_s` seconds ago."""
    with session_scope(get_engine(settings.database_url)) as session:
        for job_id, age in ages_s.items():
            session.get(Job, job_id).published_at = utcnow() - timedelta(seconds=age)


def check(settings):
    with session_scope(get_engine(settings.database_url)) as session:
        return lost_in_pop(session, client_of(settings), POLICY)


def lost(settings) -> list[str]:
    """The jobs found lost; the note forgotten when the check says so (as the sweeper does
    once it has published them)."""
    found = check(settings)
    forget(client_of(settings), found.settled)
    return [job_id for job_id, _kind, _batch in found.jobs]


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
    assert check(settings).jobs == [(lines[0], "text", True)]


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


def sweeper_of(settings, publish) -> Sweeper:
    return Sweeper(
        get_engine(settings.database_url),
        client_of(settings),
        publish,
        interval_s=1,
        redispatch_after_s=300,
        popped=POLICY,
    )


def test_the_sweeper_looks_each_sweep_until_the_queues_drain(client, key, settings, transport):
    engine = get_engine(settings.database_url)
    popped, waiting = submit(client, key), submit(client, key)
    published(settings, {popped: 30, waiting: 20})
    client_of(settings).rpop(TEXT_QUEUE)
    sent: list[str] = []
    sweeper = sweeper_of(settings, lambda job_id, kind, _delay, _batch: sent.append(job_id))
    # no death noted: a popped message is in some live consumer's hands
    assert sweeper.sweep_once()["lost_in_pop"] == 0
    # a death noted while `waiting` is still in line: nothing yet, the note kept
    died(settings)
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and sent == []
    assert client_of(settings).exists(UNCHECKED)
    # the queue drained: the popped one is published again, once, and the note forgotten
    assert client_of(settings).rpop(TEXT_QUEUE)  # `waiting`, taken by a consumer that ran it
    with session_scope(engine) as session:
        session.get(Job, waiting).status = "succeeded"
    assert sweeper.sweep_once()["lost_in_pop"] == 1 and sent == [popped]
    with session_scope(engine) as session:
        assert aware(session.get(Job, popped).published_at) > utcnow() - timedelta(seconds=5)
    assert not client_of(settings).exists(UNCHECKED)
    assert sweeper.sweep_once()["lost_in_pop"] == 0 and sent == [popped]


def test_the_note_stays_until_the_lost_jobs_are_published(client, key, settings, transport):
    popped = submit(client, key)
    published(settings, {popped: 30})
    client_of(settings).rpop(TEXT_QUEUE)
    died(settings)

    def broker_down(*_args):
        raise ConnectionError("broker down")

    assert sweeper_of(settings, broker_down).sweep_once()["published"] == 0
    assert client_of(settings).exists(UNCHECKED)  # found, not yet out: looked for again
    sent: list[str] = []
    sweeper = sweeper_of(settings, lambda job_id, *_rest: sent.append(job_id))
    assert sweeper.sweep_once()["lost_in_pop"] == 1 and sent == [popped]
    assert not client_of(settings).exists(UNCHECKED)


def test_only_an_owner_that_did_not_stop_cleanly_is_noted(settings):
    client = client_of(settings)
    mark_stopped(client, owner="host:1:clean")
    # a clean stop read its pending pop and gave the message back: nothing to look for
    assert not note_killed(client, {"host:1:clean"}, ttl_s=300)
    assert not client.exists(UNCHECKED)
    assert note_killed(client, {"host:1:clean", "host:2:killed"}, ttl_s=300)
    assert 0 < client.ttl(UNCHECKED) <= 300
    client.delete(STOPPED)


def test_a_lost_job_on_an_idle_queue_is_found_while_another_queue_is_busy(
    client, key, settings, transport
):
    engine = get_engine(settings.database_url)
    popped = submit(client, key)
    published(settings, {popped: 30})
    client_of(settings).rpop(TEXT_QUEUE)
    batch_id, _ = make_batch(engine, [QUEUED])
    with session_scope(engine) as session:
        line = session.exec(select(Job.id).where(Job.batch_id == batch_id)).one()
    push_batch_jobs(client_of(settings), [(line, "text")])  # the batch lane holds a line
    died(settings)
    found = check(settings)
    assert found.jobs == [(popped, "text", False)]
    assert found.settled is None  # the busy lane is still to look at


def test_a_job_message_in_a_priority_list_makes_its_queue_busy(client, key, settings, transport):
    popped, other = submit(client, key), submit(client, key)
    published(settings, {popped: 30, other: 30})
    client = client_of(settings)
    client.rpop(TEXT_QUEUE)
    client.lmove(TEXT_QUEUE, priority_keys(TEXT_QUEUE)[1], "RIGHT", "LEFT")  # `other`, priority 3
    died(settings)
    assert lost(settings) == []


def test_a_tried_job_waits_out_any_countdown_before_it_is_presumed_lost(
    client, key, settings, transport
):
    # Given a job tried once and given back to the queue 30 s ago (a retry's countdown message,
    # which a killed consumer popped): its countdown may run up to 60 s
    retried = submit(client, key)
    published(settings, {retried: 30})
    with session_scope(get_engine(settings.database_url)) as session:
        session.get(Job, retried).attempts = 1
    client_of(settings).rpop(TEXT_QUEUE)
    died(settings)
    found = check(settings)
    assert found.jobs == [] and found.settled is None  # not yet, and looked for again
    published(settings, {retried: 61})
    assert lost(settings) == [retried]


def test_a_death_noted_during_a_check_outlives_it(settings):
    client = client_of(settings)
    note_death(client, ttl_s=300, now=utcnow() - timedelta(seconds=10))
    first = client.get(UNCHECKED)
    with session_scope(get_engine(settings.database_url)) as session:
        found = lost_in_pop(session, client, POLICY)
    assert found.settled == first  # every queue idle: this check may forget its note…
    note_death(client, ttl_s=300)  # …but another sweeper noted a new death meanwhile
    forget(client, found.settled)
    assert client.exists(UNCHECKED) and client.get(UNCHECKED) != first
