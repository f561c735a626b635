"""Jobs whose message a dead consumer had popped off its list but not yet recorded as unacked.

kombu's Redis transport takes a message with one command (`BRPOP`) and records it in its
`unacked` hash with a second (`QoS.append`, models/redis_transport.py). A worker killed between
the two takes the message with it: it is in no list and no unacked hash, so neither kombu nor
models/reserved.py can give it back, and only the sweeper's presumption of loss
(`GENQ_REDISPATCH_AFTER_S`, five minutes) would publish it again. Under load the window is not
small: the consumer thread waits for the GIL between the two, milliseconds per message. Redis
has no blocking pop over several lists that also moves the message somewhere, so the pop itself
cannot be made atomic from here.

What can be known is which jobs have left their lists. A queue's lists are first in, first out
(publishes `LPUSH`, consumers `RPOP`); only a message given back (kombu's restore, `RPUSH`, and
marked `redelivered`) jumps the line. So a job published a clear margin before the first message
in line that was not given back, or any job once its lists hold nothing else, has been taken.
When a consumer has died, such a job still queued and in no unacked hash lost its message with
it, and is published again (`lost_in_pop`). A live consumer caught between its two commands at
that instant makes a duplicate, which is harmless: the claim lets one copy run a job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import and_, or_, true
from sqlmodel import Session, col, select

from models.broker import priority_keys
from models.db import db_moment, utcnow
from models.jobs import QUEUED, Job, aware
from models.lifecycle import SWEEP_BATCH, Due
from models.queue import BATCH_QUEUE_BY_KIND, QUEUE_BY_KIND
from models.reserved import UNACKED, job_of, job_of_message

#: a job must have been published this much before the first message in line to count as
#: taken: the API inserts (and stamps) a job before it pushes its message, and API hosts'
#: clocks may differ by a little
MARGIN_S = 1.0
#: how far from the front of a list to look past given-back messages for the first in line
LOOK_AHEAD = 64
#: each job queue by (kind, whether it is the batch lane)
JOB_QUEUES = {
    **{(kind, False): queue for kind, queue in QUEUE_BY_KIND.items()},
    **{(kind, True): queue for kind, queue in BATCH_QUEUE_BY_KIND.items()},
}


@dataclass
class Front:
    """The front of one queue's lists: the jobs of the given-back messages waiting there, and
    of the first message in line in each list (none: the list holds nothing else)."""

    given_back: set[str] = field(default_factory=set)
    first: list[str] = field(default_factory=list)
    #: False: more given-back messages than were read, so the first in line is not known
    known: bool = True


def fronts(client: redis.Redis) -> dict[tuple[str, bool], Front]:
    """The front of every job queue's lists, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for queue in JOB_QUEUES.values():
        for key in priority_keys(queue):
            pipe.lrange(key, -LOOK_AHEAD, -1)
    replies = iter(pipe.execute())
    found = {}
    for lane, queue in JOB_QUEUES.items():
        front = found[lane] = Front()
        for _key in priority_keys(queue):
            read(front, next(replies))
    return found


def read(front: Front, messages: list[bytes]) -> None:
    """Walk one list from its front (the right end): given-back messages, then the first."""
    for raw in reversed(messages):
        message = json.loads(raw)
        job = job_of_message(message)
        if job is None:  # another task's message (a batch's finalize) dates no job
            continue
        if not message.get("headers", {}).get("redelivered"):
            front.first.append(job)
            return
        front.given_back.add(job)
    if len(messages) == LOOK_AHEAD:  # a longer run of given-back messages than was read
        front.known = False


def unacked_jobs(client: redis.Redis) -> set[str]:
    """The jobs of every message some consumer holds unacked (read before the jobs' states:
    a message recorded, then acked once its job is claimed, is seen in one of the two)."""
    return {job for stored in client.hvals(UNACKED) if (job := job_of(stored)) is not None}


def lost_in_pop(session: Session, client: redis.Redis, *, now: datetime | None = None) -> list[Due]:
    """Queued jobs whose message has left its lists and is held by no consumer: after a
    consumer died, the messages it popped and never recorded (at most `SWEEP_BATCH`)."""
    now = now or utcnow()  # before the lists are read: an empty list dates nothing after it
    found = fronts(client)
    accounted = unacked_jobs(client).union(*(front.given_back for front in found.values()))
    published = published_at_of(session, (job for f in found.values() for job in f.first))
    taken = [
        in_lane(session, kind, batch, min((published[job] for job in front.first), default=now))
        for (kind, batch), front in found.items()
        # a front that cannot be dated is left to the presumption of loss
        if front.known and all(job in published for job in front.first)
    ]
    if not taken:
        return []
    query = (
        select(Job.id, Job.kind, Job.batch_id)
        .where(col(Job.status) == QUEUED)
        .where(col(Job.cache_source_id).is_(None))  # a cache follower waits for its leader
        .where(col(Job.id).not_in(list(accounted)) if accounted else true())
        .where(or_(*taken))
        .limit(SWEEP_BATCH)
    )
    return [(job_id, kind, batch_id is not None) for job_id, kind, batch_id in session.exec(query)]


def in_lane(session: Session, kind: str, batch: bool, first_at: datetime):
    """The jobs of one queue published a margin before its first message in line was."""
    before = first_at - timedelta(seconds=MARGIN_S)
    lane = col(Job.batch_id).is_not(None) if batch else col(Job.batch_id).is_(None)
    return and_(col(Job.kind) == kind, lane, col(Job.published_at) < db_moment(session, before))


def published_at_of(session: Session, jobs: Iterable[str]) -> dict[str, datetime]:
    """When each of these jobs was last published (absent: unknown, or never)."""
    ids = list(set(jobs))
    if not ids:
        return {}
    rows = session.exec(select(Job.id, Job.published_at).where(col(Job.id).in_(ids)))
    return {job_id: aware(at) for job_id, at in rows if at is not None}
