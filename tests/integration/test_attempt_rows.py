"""An attempt made without SQLModel's constructor (models/attempts.py `new_attempt`) is the
object the constructor makes: careful paths add it to a session, the hot path inserts its row."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import inspect

from models.attempts import Attempt, add_attempt, attempt_row, list_attempts, new_attempt
from models.db import get_engine, session_scope
from models.jobs import Job, aware
from models.keys import create_key


def values(**extra) -> dict:
    return {
        "job_id": "j" * 32,
        "number": 2,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "worker": "w1",
        "outcome": "retryable_error",
        "started_at": datetime(2026, 12, 1, 20, 0, tzinfo=UTC),
        "latency_ms": 12,
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cost_usd": Decimal("0.0000450000"),
        "http_status": 503,
        "error_type": "provider_error",
        **extra,
    }


def test_a_new_attempt_is_what_the_constructor_makes():
    made, built = new_attempt(**values()), Attempt(**values())
    fields = {name: getattr(built, name) for name in Attempt.model_fields}
    # every field and default as the constructor sets them; its own end time, made fresh
    assert {name: getattr(made, name) for name in Attempt.model_fields} == {
        **fields,
        "finished_at": made.finished_at,
    }
    assert made.finished_at.tzinfo is not None and made.finished_at >= built.started_at
    assert (made.id, made.cached_tokens, made.images, made.error) == (None, 0, 0, None)
    assert made.model_fields_set == built.model_fields_set
    assert made.model_dump() == {**built.model_dump(), "finished_at": made.finished_at}
    # the row a Core INSERT gets is its columns but `id`, as model_dump gives them
    assert attempt_row(made) == made.model_dump(exclude={"id"})


def test_a_change_after_it_is_made_is_in_its_row():
    attempt = new_attempt(**values(outcome="succeeded"))
    attempt.outcome = "cancelled"  # as the cancel-during-call path does
    assert attempt_row(attempt)["outcome"] == "cancelled"


@pytest.fixture
def job_id(database_url) -> str:
    with session_scope(get_engine(database_url)) as session:
        key, _ = create_key(session, name="attempts")
        job = Job(
            key_id=key.id,
            kind="text",
            model="gpt-4o-mini",
            request={"kind": "text", "prompt": "Write a haiku"},
        )
        session.add(job)
    return job.id


def test_a_new_attempt_is_a_transient_orm_object_the_session_stores(database_url, job_id):
    engine = get_engine(database_url)
    attempt = new_attempt(**values(job_id=job_id))
    assert inspect(attempt).transient
    attempt.outcome = "cancelled"  # a change is tracked as on any new instance
    assert inspect(attempt).attrs.outcome.history.added == ["cancelled"]
    with session_scope(engine) as session:
        add_attempt(session, job=session.get(Job, job_id), attempt=attempt)
    assert attempt.id is not None  # flushed: the database gave it its id
    with session_scope(engine) as session:
        (stored,) = list_attempts(session, job_id=job_id)
        job = session.get(Job, job_id)
    assert (stored.outcome, stored.number, stored.http_status, stored.cost_usd) == (
        "cancelled",
        2,
        503,
        Decimal("0.0000450000"),
    )
    assert aware(stored.started_at) == values()["started_at"]
    assert (job.attempts, job.prompt_tokens, job.cost_usd) == (1, 100, Decimal("0.0000450000"))


def test_an_attempt_made_first_in_a_fresh_process_works():
    # a worker's first job may make its attempt before anything else used the ORM (on
    # PostgreSQL the claim and the end are Core statements): its attributes must work then too
    code = (
        "from models.attempts import new_attempt\n"
        "a = new_attempt(job_id='j', number=1, model='m', provider='p', outcome='succeeded')\n"
        "a.outcome = 'cancelled'\n"
        "print(a.model, a.outcome, a.cost_usd)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["m", "cancelled", "0"]
