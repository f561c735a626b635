"""Jobs whose message a dead consumer had popped off its list but not yet recorded as unacked.

kombu's Redis transport takes a message with one command (`BRPOP`) and records it in its
`unacked` hash with a second (`QoS.append`, models/redis_transport.py). A worker killed between
the two takes the message with it: it is in no list and no unacked hash, so neither kombu nor
models/reserved.py can give it back, and only the sweeper's presumption of loss
(`GENQ_REDISPATCH_AFTER_S`, five minutes; a batch line only once its lane is empty) would publish
it again. Under load the window is not small: the consumer thread waits for the GIL between the
two, milliseconds per message. Redis has no blocking pop over several lists that also moves the
message somewhere, so the pop itself cannot be made atomic from here.

So when the sweeper finds a dead consumer it notes when (`UNCHECKED`, in Redis: another worker's
sweeper may carry on), and from then on, each sweep, looks at every job queue that holds nothing
waiting in line (messages given back by kombu's restore, marked `redelivered`, and other tasks'
messages aside): a job of that queue still queued, published before the death was seen, and held
by no consumer has lost its message, and is published again. A queue still busy is looked at in a
later sweep, once it has drained; the note lasts `GENQ_REDISPATCH_AFTER_S`, after which the
presumption of loss covers what is left. No job is dated against another: the stamps of jobs in
different lists, batches and API processes are not in push order. A live consumer caught between
its two commands at that instant, or a publish in flight for more than `MARGIN_S`, makes the
republish a duplicate, which is harmless: the claim lets one copy run a job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from models.broker import priority_keys
from models.db import db_moment, utcnow
from models.jobs import QUEUED, Job
from models.lifecycle import SWEEP_BATCH, Due
from models.queue import BATCH_QUEUE_BY_KIND, QUEUE_BY_KIND
from models.reserved import UNACKED, job_of, job_of_message

#: string: when a dead consumer was last seen whose popped message is still to look for (epoch
#: seconds, the sweeper's clock); deleted once every job queue was looked at after it
UNCHECKED = "genq:popped:unchecked"
#: a job must have been published this much before the death was seen: its publish may still
#: be on its way to Redis (the API stamps a job, commits it, then pushes its message)
MARGIN_S = 1.0
#: a list longer than this is busy (it cannot hold only given-back messages worth reading)
LOOK_AHEAD = 64
#: each job queue by (kind, whether it is the batch lane)
JOB_QUEUES = {
    **{(kind, False): queue for kind, queue in QUEUE_BY_KIND.items()},
    **{(kind, True): queue for kind, queue in BATCH_QUEUE_BY_KIND.items()},
}
#: delete the note only if no later death replaced it meanwhile
_FORGET = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def note_death(client: redis.Redis, *, ttl_s: int, now: datetime | None = None) -> None:
    """A consumer was found dead: look for its popped message from now on (a later death
    replaces an earlier one: its cut-off covers the earlier's jobs too)."""
    client.set(UNCHECKED, repr((now or utcnow()).timestamp()), ex=ttl_s)


@dataclass
class Line:
    """One job queue's lists: whether a job message waits in line there, and the jobs of the
    given-back messages (those are in the queue, even with nothing in line)."""

    busy: bool = False
    given_back: set[str] = field(default_factory=set)


def lines(client: redis.Redis) -> dict[tuple[str, bool], Line]:
    """Every job queue's line, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for queue in JOB_QUEUES.values():
        for key in priority_keys(queue):
            pipe.lrange(key, -LOOK_AHEAD - 1, -1)
    replies = iter(pipe.execute())
    found = {}
    for lane, queue in JOB_QUEUES.items():
        line = found[lane] = Line()
        for _key in priority_keys(queue):
            read(line, next(replies))
    return found


def read(line: Line, messages: list[bytes]) -> None:
    if len(messages) > LOOK_AHEAD:
        line.busy = True
        return
    for raw in messages:
        message = json.loads(raw)
        job = job_of_message(message)
        if job is None:  # another task's message (a batch's finalize)
            continue
        if not message.get("headers", {}).get("redelivered"):
            line.busy = True
            return
        line.given_back.add(job)


def unacked_jobs(client: redis.Redis) -> set[str]:
    """The jobs of every message some consumer holds unacked (read after the lines and before
    the jobs' states: a message taken meanwhile is seen held, or its job seen running)."""
    return {job for stored in client.hvals(UNACKED) if (job := job_of(stored)) is not None}


def lost_in_pop(session: Session, client: redis.Redis) -> list[Due]:
    """While a death is noted: the queued jobs of queues with nothing in line, published before
    it was seen and held by no consumer (at most `SWEEP_BATCH` a sweep). Forgets the death once
    every job queue has been looked at."""
    noted = client.get(UNCHECKED)
    if noted is None:
        return []
    seen = datetime.fromtimestamp(float(noted), UTC)
    found = lines(client)
    held = unacked_jobs(client)
    idle = [lane for lane, line in found.items() if not line.busy]
    lost: list[Due] = []
    if idle:
        before = db_moment(session, seen - timedelta(seconds=MARGIN_S))
        query = (
            select(Job.id, Job.kind, Job.batch_id)
            .where(col(Job.status) == QUEUED)
            .where(col(Job.cache_source_id).is_(None))  # a cache follower waits for its leader
            .where(col(Job.published_at) < before)
            .where(or_(*(in_lane(kind, batch) for kind, batch in idle)))
            .order_by(col(Job.published_at))
        )
        for job_id, kind, batch_id in session.exec(query):
            lane = (kind, batch_id is not None)
            if job_id not in held and job_id not in found[lane].given_back:
                lost.append((job_id, kind, batch_id is not None))
                if len(lost) == SWEEP_BATCH:
                    return lost  # the rest next sweep: the note stays
    if len(idle) == len(found):
        client.eval(_FORGET, 1, UNCHECKED, noted)
    return lost


def in_lane(kind: str, batch: bool):
    """The jobs of one queue: its kind's interactive queue, or its batch lane."""
    lane = col(Job.batch_id).is_not(None) if batch else col(Job.batch_id).is_(None)
    return and_(col(Job.kind) == kind, lane)
