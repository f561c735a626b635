"""Jobs whose message a dead consumer had popped off its list but not yet recorded as unacked.

kombu's Redis transport takes a message with one command (`BRPOP`) and records it in its `unacked`
hash with a second (`QoS.append`, models/redis_transport.py; genq's pops up to
`GENQ_WORKER_FETCH_BATCH` - 1 more of the same list in that second round trip and records them in a
third). A worker killed in between takes those messages with it: each is in no list and no unacked
hash, so neither kombu nor models/reserved.py can give it back, and only the sweeper's presumption
of loss (`GENQ_REDISPATCH_AFTER_S`, five minutes; a batch line only once its lane is empty) would
publish it again. Under load the window is not small: the consumer thread waits for the GIL between
the two, milliseconds per message. Redis has no blocking pop over several lists that also moves the
message somewhere, so the pop itself cannot be made atomic from here.

So when the sweeper finds a consumer that went silent without stopping cleanly (a clean stop
reads its pending pop and gives the message back), it notes when (`UNCHECKED`, in Redis: another
worker's sweeper may carry on), and from then on, each sweep, looks at every job queue that holds
nothing waiting in line (messages given back by kombu's restore, marked `redelivered`, and other
tasks' messages aside): a job of that queue still queued, published a margin before the death was
seen, and held by no consumer has lost its message, and is published again. A queue still busy is
looked at in a later sweep, once it has drained. A job that has been tried is published again only
once any countdown its last message carried (a retry's Retry-After) has surely passed. The note is
dropped once a sweep found every job queue idle and published all it found, or after
`GENQ_REDISPATCH_AFTER_S`, when the presumption of loss covers what is left. No job is dated
against another: the stamps of jobs in different lists, batches and API processes are not in push
order. A live consumer caught between its two commands at that instant, or a publish in flight for
longer than the margin, makes the republish a duplicate, which is harmless: the claim lets one
copy run a job.
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
from models.jobs import QUEUED, Job, aware
from models.lifecycle import PUBLISH_GRACE_S, SWEEP_BATCH, Due
from models.queue import QUEUE_BY_KIND, queue_for
from models.reserved import UNACKED, job_of, job_of_message, killed

#: string: when a killed consumer was last seen whose popped message is still to look for
#: (epoch seconds, the sweeper's clock)
UNCHECKED = "genq:popped:unchecked"
#: a list longer than this is busy (it cannot hold only given-back messages worth reading)
LOOK_AHEAD = 64
#: each job queue by (kind, whether it is the batch lane)
JOB_QUEUES = {
    (kind, batch): queue_for(kind, batch=batch) for kind in QUEUE_BY_KIND for batch in (False, True)
}
Lane = tuple[str, bool]
#: delete the note only if no later death replaced it meanwhile
_FORGET = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


@dataclass(frozen=True)
class PoppedPolicy:
    """`margin_s`: how long before the death was seen a job must have been published (its
    publish may still be on its way: the API stamps a job, commits it, then pushes, retrying
    for seconds when Redis is slow); a message the dead consumer really popped was published
    at least two thirds of a lease before its death is seen (it beat every third). And
    `countdown_max_s`: the longest countdown a retry's message carries."""

    margin_s: float = PUBLISH_GRACE_S
    countdown_max_s: float = 60.0

    @classmethod
    def from_settings(cls, settings) -> PoppedPolicy:
        return cls(
            margin_s=min(PUBLISH_GRACE_S, settings.lease_s / 2),
            countdown_max_s=max(settings.retry_after_cap_s, settings.retry_max_s),
        )


@dataclass
class Lost:
    """The jobs to publish again, and the note to forget once they are (None: keep it)."""

    jobs: list[Due] = field(default_factory=list)
    settled: bytes | None = None


def note_death(client: redis.Redis, *, ttl_s: int, now: datetime | None = None) -> None:
    """A consumer was killed: look for its popped message from now on (a later death replaces
    an earlier one: its cut-off covers the earlier's jobs too)."""
    client.set(UNCHECKED, repr((now or utcnow()).timestamp()), ex=ttl_s)


def note_killed(client: redis.Redis, dead: set[str], *, ttl_s: int) -> bool:
    """Note a death if any of these silent owners did not stop cleanly; whether one did not."""
    if not killed(client, dead):
        return False
    note_death(client, ttl_s=ttl_s)
    return True


def forget(client: redis.Redis, settled: bytes | None) -> None:
    if settled is not None:
        client.eval(_FORGET, 1, UNCHECKED, settled)


@dataclass
class Line:
    """One job queue's lists: whether a job message waits in line there, and the jobs of the
    given-back messages (those are in the queue, even with nothing in line)."""

    busy: bool = False
    given_back: set[str] = field(default_factory=set)


def read_lines(pipe) -> None:
    for queue in JOB_QUEUES.values():
        for key in priority_keys(queue):
            pipe.lrange(key, -LOOK_AHEAD - 1, -1)


def parse_lines(replies: list[list[bytes]]) -> dict[Lane, Line]:
    found, replies = {}, iter(replies)
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


def lines(client: redis.Redis) -> dict[Lane, Line]:
    """Every job queue's line, in one round trip."""
    pipe = client.pipeline(transaction=False)
    read_lines(pipe)
    return parse_lines(pipe.execute())


def snapshot(client: redis.Redis) -> tuple[dict[Lane, Line], set[str]]:
    """The lines and the jobs of every message some consumer holds unacked, as of one instant
    (one MULTI: kombu's restore moves a message between the two in one MULTI of its own)."""
    pipe = client.pipeline(transaction=True)
    read_lines(pipe)
    pipe.hvals(UNACKED)
    *replies, held = pipe.execute()
    return parse_lines(replies), {job for raw in held if (job := job_of(raw)) is not None}


def lost_in_pop(session: Session, client: redis.Redis, policy: PoppedPolicy) -> Lost:
    """While a death is noted: the queued jobs of queues with nothing in line, published before
    it was seen and held by no consumer (at most `SWEEP_BATCH` a sweep), and the note to forget
    once they are published again (every job queue was idle, nothing was left for later)."""
    noted = client.get(UNCHECKED)
    if noted is None:
        return Lost()
    seen = datetime.fromtimestamp(float(noted), UTC)
    found, held = lines(client), set()
    idle = [lane for lane, line in found.items() if not line.busy]
    if not idle:  # the usual case while a queue is long: no read of the unacked hash
        return Lost()
    candidates = queued_before(session, idle, seen - timedelta(seconds=policy.margin_s))
    if candidates:
        found, held = snapshot(client)  # then the jobs' states again: a message taken since
        candidates = still_queued(session, candidates)  # is seen held or its job running
    now, lost, later = utcnow(), Lost(), False
    for job_id, kind, batch, attempts, published_at in candidates:
        line = found[(kind, batch)]
        if line.busy:
            later = True
        elif job_id in held or job_id in line.given_back:
            continue
        elif attempts and published_at > now - timedelta(seconds=policy.countdown_max_s):
            later = True  # a retry's message may still be counting down
        elif len(lost.jobs) == SWEEP_BATCH:
            later = True
        else:
            lost.jobs.append((job_id, kind, batch))
    if not later and not any(line.busy for line in found.values()):
        lost.settled = noted
    return lost


Candidate = tuple[str, str, bool, int, datetime]


def queued_before(session: Session, lanes: list[Lane], before: datetime) -> list[Candidate]:
    """The queued jobs of these queues published before `before`, oldest first (on an idle
    queue they are the held ones and the lost ones: as many as the unacked hash holds)."""
    query = (
        select(Job.id, Job.kind, Job.batch_id, Job.attempts, Job.published_at)
        .where(col(Job.status) == QUEUED)
        .where(col(Job.cache_source_id).is_(None))  # a cache follower waits for its leader
        .where(col(Job.published_at) < db_moment(session, before))
        .where(or_(*(in_lane(kind, batch) for kind, batch in lanes)))
        .order_by(col(Job.published_at))
    )
    return [
        (job_id, kind, batch_id is not None, attempts, aware(published_at))
        for job_id, kind, batch_id, attempts, published_at in session.exec(query)
    ]


def still_queued(session: Session, candidates: list[Candidate]) -> list[Candidate]:
    """Those still queued now (in chunks: a 429 storm can hold thousands counting down)."""
    ids, queued = [candidate[0] for candidate in candidates], set()
    for start in range(0, len(ids), SWEEP_BATCH):
        chunk = ids[start : start + SWEEP_BATCH]
        query = select(Job.id).where(col(Job.id).in_(chunk), col(Job.status) == QUEUED)
        queued.update(session.exec(query))
    return [candidate for candidate in candidates if candidate[0] in queued]


def in_lane(kind: str, batch: bool):
    """The jobs of one queue: its kind's interactive queue, or its batch lane."""
    lane = col(Job.batch_id).is_not(None) if batch else col(Job.batch_id).is_(None)
    return and_(col(Job.kind) == kind, lane)
