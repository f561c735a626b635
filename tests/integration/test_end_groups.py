"""Grouped ends on a real database (worker/ends.py, models/lone.py `LoneStatement.each`).

Plain text jobs' ends written as one group on PostgreSQL write exactly what each writes alone
(the job, its attempt, the key's settlement), straight on psycopg and through SQLAlchemy; a
cancel or a lost claim in a group is told apart as alone; a group with one end that fails writes
the others end by end. `each` itself runs on both databases: every statement or none."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import bindparam, update

from models.attempts import SUCCEEDED as ATTEMPT_SUCCEEDED
from models.attempts import Attempt
from models.catalogue import get_catalogue
from models.db import make_engine, session_scope
from models.jobs import CANCELLED, RUNNING, SUCCEEDED, Job, claim_many
from models.keys import ApiKey, create_key
from models.lone import LoneStatement, NotWritten
from models.pricing import Usage
from tests.helpers import row_as_text, text_job_row
from worker.providers.base import TextResult
from worker.recording import Call, ClaimLost, end_groups, record_output

USAGE = Usage(prompt_tokens=100, completion_tokens=50)


def _claimed(engine, count: int, *, keys: int = 1) -> list:
    """`count` plain text jobs over `keys` keys, claimed; their claim rows."""
    with session_scope(engine) as session:
        made = [
            create_key(session, name=f"ends-{i}", budget_usd=Decimal(5))[0] for i in range(keys)
        ]
        jobs = [text_job_row(made[i % keys].id) for i in range(count)]
        for i, job in enumerate(jobs):
            made[i % keys].reserved_usd += job.reserved_usd
        session.add_all(jobs)
    rows = claim_many(engine, job_ids=[job.id for job in jobs], worker="w", lease_s=60)
    return [rows[job.id] for job in jobs]


def _end(engine, row, ends, *, worker: str = "w"):
    """record_output of one successful call of the claimed job: its JobEnd, or the error."""
    call = Call(
        job_id=row.id,
        token=row.claim_token,
        key_id=row.key_id,
        number=1,
        spec=get_catalogue().get(row.model),
        worker=worker,
        provider="fake",
    )
    attempt = call.attempt(outcome=ATTEMPT_SUCCEEDED, usage=USAGE)
    result = TextResult(text="A haiku", usage=USAGE, finish_reason="stop")
    try:
        return record_output(
            engine,
            call,
            attempt,
            result,
            SUCCEEDED,
            reserved=row.reserved_usd,
            webhook=False,
            ends=ends,
        )
    except Exception as exc:
        return exc


class _Held:
    """The grouped ends' statement, its first lone end held until the other threads queue;
    each group's job ids recorded."""

    def __init__(self, statement: LoneStatement, ends, behind: int):
        self.statement, self.ends, self.behind = statement, ends, behind
        self.lone: list[str] = []
        self.groups: list[list[str]] = []

    def first(self, engine, values):
        self.lone.append(values["job_id"])
        if len(self.lone) == 1:
            deadline = time.monotonic() + 10
            while len(self.ends._waiting) < self.behind:
                assert time.monotonic() < deadline, "the other ends never queued"
                time.sleep(0.001)
        return self.statement.first(engine, values)

    def each(self, engine, values_seq):
        self.groups.append([values["job_id"] for values in values_seq])
        return self.statement.each(engine, values_seq)


def _together(engine, rows, options: dict[int, dict] | None = None) -> tuple[list, _Held]:
    """The rows' ends from a thread each: the first alone, the others queued behind it and then
    written as a group. What each thread got, and the statement's record."""
    ends = end_groups(engine)
    held = ends.statement = _Held(ends.statement, ends, behind=len(rows) - 1)
    got: list = [None] * len(rows)

    def one(i: int) -> None:
        got[i] = _end(engine, rows[i], ends, **(options or {}).get(i, {}))

    first = threading.Thread(target=one, args=(0,))
    first.start()
    deadline = time.monotonic() + 10
    while not held.lone:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    others = [threading.Thread(target=one, args=(i,)) for i in range(1, len(rows))]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(20)
        assert not thread.is_alive()
    return got, held


@pytest.mark.parametrize("path", ["psycopg", "sqlalchemy"])
def test_ends_written_together_are_what_each_writes_alone(pg_engines, path):
    engine = pg_engines[0] if path == "psycopg" else pg_engines[1]
    rows = _claimed(engine, 6, keys=2)
    alone = _end(engine, rows[5], None)
    got, held = _together(engine, rows[:5])

    assert held.lone == [rows[0].id] and len(held.groups) == 1
    assert sorted(held.groups[0]) == sorted(row.id for row in rows[1:5])
    order = [(row.key_id, row.id) for row in rows[1:5]]
    assert held.groups[0] == [job for _, job in sorted(order)]  # keys in one order
    assert [end.status for end in [*got, alone]] == [SUCCEEDED] * 6
    for row in rows[:5]:
        assert row_as_text(engine, "jobs", "id", row.id) == row_as_text(
            engine, "jobs", "id", rows[5].id
        )
        assert row_as_text(engine, "attempts", "job_id", row.id) == row_as_text(
            engine, "attempts", "job_id", rows[5].id
        )
    with session_scope(engine) as session:
        cost = session.get(Job, rows[5].id).cost_usd
        assert cost > 0
        for key in session.scalars(sa.select(ApiKey).where(ApiKey.name.like("ends-%"))):
            assert (key.spent_usd, key.reserved_usd) == (3 * cost, Decimal(0))


def test_a_cancel_and_a_lost_claim_in_a_group_are_told_apart_as_alone(pg_engines):
    engine = pg_engines[0]
    rows = _claimed(engine, 4)
    with session_scope(engine) as session:
        session.get(Job, rows[2].id).cancel_requested = True  # during the call
        session.get(Job, rows[3].id).claim_token = "another-delivery"  # reclaimed meanwhile

    got, held = _together(engine, rows)

    assert len(held.groups) == 1 and len(held.groups[0]) == 3
    assert [end.status for end in got[:3]] == [SUCCEEDED, SUCCEEDED, CANCELLED]
    assert isinstance(got[3], ClaimLost)
    with session_scope(engine) as session:
        assert session.get(Job, rows[2].id).status == CANCELLED
        assert session.get(Job, rows[3].id).status == RUNNING  # the other delivery's to end
        outcomes = session.scalars(sa.select(Attempt.outcome).where(Attempt.job_id == rows[3].id))
        assert list(outcomes) == []  # the Runner records its call as an orphan, once


def test_a_group_with_an_end_that_fails_writes_the_others_end_by_end(pg_engines):
    engine = pg_engines[0]
    rows = _claimed(engine, 4)

    got, held = _together(engine, rows, {2: {"worker": "w" * 300}})  # over the column's 200

    assert len(held.groups) == 1  # it wrote nothing; then each end alone
    assert sorted(held.lone) == sorted(row.id for row in rows)
    assert [got[i].status for i in (0, 1, 3)] == [SUCCEEDED] * 3
    assert isinstance(got[2], sa.exc.DataError)
    with session_scope(engine) as session:
        assert session.get(Job, rows[2].id).status == RUNNING  # run again when its lease ends
        assert session.scalar(sa.select(sa.func.count()).where(Attempt.job_id == rows[2].id)) == 0
        key = session.get(ApiKey, session.get(Job, rows[0].id).key_id)
        assert key.spent_usd == 3 * session.get(Job, rows[0].id).cost_usd


_RENAME = LoneStatement(
    update(Job.__table__)
    .where(Job.__table__.c.id == bindparam("job_id"))
    .values(model=bindparam("model"))
    .returning(Job.__table__.c.id, Job.__table__.c.model)
)


def test_each_writes_every_statement_in_one_transaction_or_none(database_url):
    engine = make_engine(database_url)
    rows = _claimed(engine, 2)
    named = _RENAME.each(
        engine,
        [
            {"job_id": rows[0].id, "model": "gpt-4o"},
            {"job_id": "no-such-job", "model": "gpt-4o"},
            {"job_id": rows[1].id, "model": "gpt-4o"},
        ],
    )
    assert [(row.id, row.model) if row else None for row in named] == [
        (rows[0].id, "gpt-4o"),
        None,
        (rows[1].id, "gpt-4o"),
    ]
    with pytest.raises(NotWritten) as raised:
        _RENAME.each(
            engine,
            [{"job_id": rows[0].id, "model": "gpt-4.1"}, {"job_id": rows[1].id, "model": None}],
        )
    assert isinstance(raised.value.__cause__, sa.exc.IntegrityError)  # model is NOT NULL
    with session_scope(engine) as session:
        assert [session.get(Job, row.id).model for row in rows] == ["gpt-4o", "gpt-4o"]
    engine.dispose()
