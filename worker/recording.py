"""Writing what a provider call did: one attempt row, and the job's end, guarded by the claim.

A write succeeds only while this run still owns the job (status running, same claim token);
otherwise ClaimLost tells the Runner to stop without touching the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Integer, bindparam, insert, select, update
from sqlalchemy.engine import Engine, Row
from sqlmodel import Session

from models.attempts import FAILED as ATTEMPT_FAILED
from models.attempts import Attempt, Image, add_attempt, attempt_row, new_attempt
from models.budgets import reserve, settle, settle_values
from models.catalogue import ModelSpec
from models.conversations import add_exchange
from models.db import Money, session_scope, utcnow
from models.errors import BudgetExceeded
from models.jobs import CANCELLED, FINISHED, RUNNING, Job, finish_job, owned_job
from models.jobs import FAILED as JOB_FAILED
from models.keys import ApiKey
from models.lone import LoneStatement
from models.pricing import Usage, cost_of
from models.webhooks import open_delivery
from worker import metrics
from worker.ends import EndGroups
from worker.providers.base import ImageResult, TextResult

#: attempt outcomes beyond succeeded / retryable_error / failed
CANCELLED_AFTER_CALL = "cancelled"


class ClaimLost(Exception):
    """Another delivery owns the job now; this one must stop without writing."""


#: the error type of a job whose key's budget cannot hold its next attempt
BUDGET_EXCEEDED = "budget_exceeded"


@dataclass(frozen=True, kw_only=True)
class Call:
    """One provider call in flight: which job, under which claim, which attempt, which model."""

    job_id: str
    token: str
    number: int
    spec: ModelSpec
    worker: str
    provider: str
    #: whose key pays (grouped ends take the keys' rows in its order: worker/ends.py)
    key_id: str = ""
    started_at: datetime = field(default_factory=utcnow)
    clock: float = field(default_factory=time.perf_counter)

    def attempt(self, *, outcome: str, usage: Usage, **extra) -> Attempt:
        return new_attempt(
            job_id=self.job_id,
            number=self.number,
            model=self.spec.id,
            provider=self.provider,
            worker=self.worker,
            outcome=outcome,
            started_at=self.started_at,
            latency_ms=round((time.perf_counter() - self.clock) * 1000),
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            images=usage.images,
            cost_usd=cost_of(self.spec, usage),
            **extra,
        )


def owned(session: Session, call: Call) -> Job:
    job = owned_job(session, job_id=call.job_id, token=call.token)
    if job is None:
        raise ClaimLost(call.job_id)
    return job


def record(
    engine: Engine,
    call: Call,
    attempt: Attempt,
    *,
    finish: str | None = None,
    error_type: str | None = None,
    error: str | None = None,
    hold: Decimal = Decimal(0),
) -> Job:
    """Store the attempt and fold it into the job; with `finish`, end the job in the same
    transaction. `hold`: a billed attempt to be retried used that much of the job's
    reservation, which must still cover a call: it is held again against the key, or, when
    the budget cannot, the job ends `budget_exceeded` here (the attempt then final)."""
    with session_scope(engine) as session:
        job = owned(session, call)
        job.provider = call.provider
        if hold and not finish:
            refused = hold_more(session, job=job, amount=hold)
            if refused is not None:
                attempt.outcome = ATTEMPT_FAILED
                finish, error_type, error = JOB_FAILED, BUDGET_EXCEEDED, refused
        add_attempt(session, job=job, attempt=attempt)
        if finish:
            finish_job(session, job=job, status=finish, error_type=error_type, error=error)
    if finish:
        metrics.record_job_end(kind=job.kind, model=job.model, status=finish)
    return job


#: Built once, with bind parameters, on the tables rather than the ORM entities: SQLAlchemy
#: builds and keys a fresh statement (and re-annotates an ORM one) on every execution, about
#: 0.6 ms of CPU each on this project's benchmark machine (an A/B of settle).
_JOBS = Job.__table__.c
_SUCCEED = (
    update(Job.__table__)
    .where(
        _JOBS.id == bindparam("job_id"),
        _JOBS.status == RUNNING,
        _JOBS.claim_token == bindparam("token"),
        _JOBS.cancel_requested.is_(False),
    )
    .values(
        status=bindparam("status"),
        provider=bindparam("provider"),
        model=bindparam("model"),
        attempts=_JOBS.attempts + 1,
        prompt_tokens=_JOBS.prompt_tokens + bindparam("prompt_tokens", type_=Integer()),
        completion_tokens=_JOBS.completion_tokens + bindparam("completion_tokens", type_=Integer()),
        cost_usd=_JOBS.cost_usd + bindparam("cost", type_=Money()),
        finished_at=bindparam("finished_at"),
        lease_until=None,
        reserved_usd=Decimal(0),
        error_type=None,
        error_message=None,
        output_text=bindparam("output_text"),
        finish_reason=bindparam("finish_reason"),
        output_data=bindparam("output_data"),
        image_count=bindparam("image_count"),
        image_meta=bindparam("image_meta"),
    )
    .returning(
        _JOBS.key_id,
        _JOBS.status,
        _JOBS.kind,
        _JOBS.attempts,
        _JOBS.cost_usd,
        _JOBS.conversation_id,
        _JOBS.webhook_url,
    )
)
_INSERT_ATTEMPT = insert(Attempt.__table__)
_INSERT_IMAGE = insert(Image.__table__)


def _succeed_in_one(end=_SUCCEED) -> object:
    """PostgreSQL: the job's end, its attempt and the key's settlement as one statement (data-
    modifying CTEs), one round trip instead of three. The attempt and the settlement select
    from the guarded UPDATE's RETURNING, so when the guard fails neither is written. The
    attempt's columns are bound as `a_<column>`, its cost as the end's `cost`."""
    ended = end.cte("ended")
    attempts = Attempt.__table__
    columns = [c.name for c in attempts.c if c.name != "id"]
    row = select(
        *[
            bindparam("cost" if name == "cost_usd" else f"a_{name}", type_=attempts.c[name].type)
            for name in columns
        ]
    ).select_from(ended)
    keys = ApiKey.__table__.c
    settled = (
        update(ApiKey.__table__)
        .where(keys.id == ended.c.key_id)
        .values(**settle_values(ended.c.cost_usd))  # the job's whole cost, as settle charges
    )
    return select(ended).add_cte(
        insert(attempts).from_select(columns, row).cte("attempt"), settled.cte("settled")
    )


_SUCCEED_IN_ONE = _succeed_in_one()
#: the same, for a job with nothing else to write at its end (no conversation turns, no webhook
#: delivery): guarded on that too, so it can run alone in autocommit (`_end_alone`)
_SUCCEED_ALONE = LoneStatement(
    _succeed_in_one(_SUCCEED.where(_JOBS.conversation_id.is_(None), _JOBS.webhook_url.is_(None)))
)


@dataclass(frozen=True)
class JobEnd:
    """How a job ended, as written: what the log line and the jobs metric need."""

    status: str
    kind: str
    model: str
    attempts: int
    cost_usd: Decimal

    @classmethod
    def of(cls, ended: Row, call: Call) -> JobEnd:
        """From the end's RETURNING row; the model is the call's."""
        return cls(ended.status, ended.kind, call.spec.id, ended.attempts, ended.cost_usd)


def record_output(
    engine: Engine,
    call: Call,
    attempt: Attempt,
    result: TextResult | ImageResult,
    status: str,
    *,
    reserved: Decimal,
    said: list[dict] | None = None,
    webhook: bool = True,
    ends: EndGroups | None = None,
) -> JobEnd:
    """The successful attempt, its output and the job's end: one transaction.

    The common case is three statements: the job's end as one UPDATE guarded by the claim (and
    by no cancel request), the attempt, the budget settlement; on PostgreSQL the three are one
    statement (`_SUCCEED_IN_ONE`). `reserved` is what the job held
    when claimed: only the end of the job changes it. When the guard fails, the careful path
    below tells a lost claim from a cancel requested during the call; a cancel wins: the
    attempt (its usage was spent) is recorded as `cancelled` and the job ends without output.
    A conversation's job (`said`: the messages it added, a user message or tool results) also
    stores them and the reply as the conversation's turns, in the same transaction; a webhook
    job opens its delivery there too (published once committed: models/webhooks.py); other
    jobs run no extra statement. A text job without turns or a webhook (`webhook`: whether the
    job has one, as claimed) ends on PostgreSQL in that one statement alone (`_end_alone`),
    grouped with the ends other threads write at the same time when `ends` is given.
    """
    values = _end_values(call, attempt, result, status)
    end = None
    if engine.dialect.name == "postgresql":
        values |= _attempt_values(attempt, reserved)
        if isinstance(result, TextResult) and said is None and not webhook:
            end = _end_alone(values, engine, call, ends)
    if end is None:
        end = _end_in_transaction(engine, call, attempt, result, values, reserved, said)
    metrics.record_job_end(kind=end.kind, model=end.model, status=end.status)
    return end


def _end_in_transaction(
    engine: Engine,
    call: Call,
    attempt: Attempt,
    result: TextResult | ImageResult,
    values: dict,
    reserved: Decimal,
    said: list[dict] | None,
) -> JobEnd:
    """The end with whatever else it writes (images, turns, a webhook delivery), or the
    careful path when its guard fails, in one transaction."""
    in_one = engine.dialect.name == "postgresql"
    with session_scope(engine) as session:
        ended = session.execute(_SUCCEED_IN_ONE if in_one else _SUCCEED, values).first()
        if ended is None:
            return _cancelled_during_call(session, call, attempt)
        end = _store_output(session, call, attempt, result, ended, reserved, stored=in_one)
        if ended.conversation_id is not None and said is not None:
            _store_turns(session, call, ended.conversation_id, said, result)
        if ended.webhook_url is not None:
            open_delivery(
                session,
                job_id=call.job_id,
                key_id=ended.key_id,
                status=ended.status,
                url=ended.webhook_url,
            )
        return end


def end_groups(engine: Engine) -> EndGroups:
    """A worker process's grouped ends of plain text jobs (worker/ends.py)."""
    return EndGroups(engine, _SUCCEED_ALONE)


def _end_alone(values: dict, engine: Engine, call: Call, ends: EndGroups | None) -> JobEnd | None:
    """A text job's end that is one statement and nothing else, in autocommit: atomic alone and
    as durable (it commits before it returns), without the BEGIN and COMMIT round trips; None
    when its guard failed (nothing written: a cancel, a lost claim, or turns or a webhook to
    write after all), for the transaction to take over. With `ends`, it may be one of several
    threads' ends written in one transaction, as durable (each returns after their COMMIT)."""
    ended = ends.end(values, call.key_id) if ends else _SUCCEED_ALONE.first(engine, values)
    return None if ended is None else JobEnd.of(ended, call)


def _end_values(
    call: Call, attempt: Attempt, result: TextResult | ImageResult, status: str
) -> dict:
    """The bind values of a successful end (`_SUCCEED`)."""
    text = result if isinstance(result, TextResult) else None
    return {
        "job_id": call.job_id,
        "token": call.token,
        "status": status,
        "provider": call.provider,
        "model": call.spec.id,
        "prompt_tokens": attempt.prompt_tokens,
        "completion_tokens": attempt.completion_tokens,
        "cost": attempt.cost_usd,
        "finished_at": utcnow(),
        "output_text": text.text if text else None,
        "finish_reason": text.finish_reason if text else None,
        "output_data": text.extra() if text else None,
        "image_count": len(result.images) if isinstance(result, ImageResult) else 0,
        "image_meta": image_meta(result) if isinstance(result, ImageResult) else None,
    }


def _attempt_values(attempt: Attempt, reserved: Decimal) -> dict:
    """The bind values `_SUCCEED_IN_ONE` adds: the attempt's columns, what the job held."""
    values = {f"a_{name}": value for name, value in attempt_row(attempt).items()}
    del values["a_cost_usd"]  # bound once, as `cost`
    return values | {"reserved": reserved}


def image_meta(result: ImageResult) -> list[dict]:
    """What the job's output shows of each image: its type, and its size when known."""
    return [
        {"content_type": image.content_type}
        | ({"width": image.width, "height": image.height} if image.width and image.height else {})
        for image in result.images
    ]


def _store_output(
    session: Session,
    call: Call,
    attempt: Attempt,
    result: TextResult | ImageResult,
    ended: Row,
    reserved: Decimal,
    *,
    stored: bool = False,
) -> JobEnd:
    """The job ended as succeeded: store its attempt and images, settle its budget (its whole
    cost, `ended.cost_usd`, earlier billed attempts included: they were only added to the job).
    `stored`: the end's statement already wrote the attempt and the settlement (PostgreSQL)."""
    if not stored:
        session.execute(_INSERT_ATTEMPT, attempt_row(attempt))
    if isinstance(result, ImageResult):
        session.execute(
            _INSERT_IMAGE,
            [
                {
                    "job_id": call.job_id,
                    "index": index,
                    "data": image.data,
                    "width": image.width,
                    "height": image.height,
                    "content_type": image.content_type,
                }
                for index, image in enumerate(result.images)
            ],
        )
    if not stored:
        settle(session, key_id=ended.key_id, reserved=reserved, cost=ended.cost_usd)
    return JobEnd.of(ended, call)


def _store_turns(
    session: Session, call: Call, conversation_id: str, said: list[dict], result: TextResult
) -> None:
    reply: dict = {"role": "assistant"}
    if result.text:
        reply["content"] = result.text
    if result.tool_calls:
        reply["tool_calls"] = result.tool_calls
    add_exchange(
        session,
        conversation_id=conversation_id,
        job_id=call.job_id,
        # an empty answer (no text, no calls) is not a message that could be sent again
        messages=[*said, reply] if len(reply) > 1 else said,
        encoding_name=call.spec.encoding,
    )


def _cancelled_during_call(session: Session, call: Call, attempt: Attempt) -> JobEnd:
    """The end of a job whose cancel was requested during the call; ClaimLost when the job
    is no longer this run's (the Runner then records the call as an orphan)."""
    job = owned(session, call)
    job.provider, job.model = call.provider, call.spec.id
    attempt.outcome = CANCELLED_AFTER_CALL
    add_attempt(session, job=job, attempt=attempt)
    finish_job(
        session,
        job=job,
        status=CANCELLED,
        error_type="cancelled",
        error="cancelled while running",
    )
    return JobEnd(CANCELLED, job.kind, job.model, job.attempts, job.cost_usd)


def finish_owned(
    engine: Engine, *, job_id: str, token: str, status: str, error_type: str, error: str
) -> bool:
    """End a claimed job without an attempt (deadline passed, cancelled, model gone)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id=job_id, token=token)
        if job is None:
            return False
        finish_job(session, job=job, status=status, error_type=error_type, error=error)
    metrics.record_job_end(kind=job.kind, model=job.model, status=status)
    return True


def hold_more(session: Session, *, job: Job, amount: Decimal) -> str | None:
    """Hold `amount` more against the job's key (the caller's transaction, the job's row
    locked); None when held, else why the key's budget cannot (nothing held then)."""
    try:
        key = session.get(ApiKey, job.key_id)
        reserve(session, key=key, amount=amount, needs="another attempt of this job needs")
    except BudgetExceeded as exc:
        return str(exc)
    job.reserved_usd += amount
    return None


def record_orphan(engine: Engine, attempt: Attempt) -> None:
    """A call that finished after its claim was lost still cost money: count it on the job."""
    with session_scope(engine) as session:
        job = session.get(Job, attempt.job_id)
        if job is not None:
            add_attempt(session, job=job, attempt=attempt)
            if job.status in FINISHED:  # already settled: charge the key for this call too
                settle(session, key_id=job.key_id, reserved=Decimal(0), cost=attempt.cost_usd)
