"""What a plain job costs the database: statements and transactions per job (a design property)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import event, inspect
from sqlmodel import select

from models.attempts import list_attempts
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.jobs import Job, new_job
from models.keys import ApiKey, create_key
from models.pricing import Usage
from models.webhooks import WebhookDelivery
from tests.helpers import FakeProvider
from worker.retry import RetryPolicy
from worker.runner import Runner


@pytest.fixture
def engine(database_url):
    return get_engine(database_url)


def queued_job(engine, *, budget: Decimal | None = None, reserved: Decimal = Decimal(0)) -> Job:
    with session_scope(engine) as session:
        key, _ = create_key(session, name="hot", budget_usd=budget)
        key.reserved_usd = reserved if budget is not None else Decimal(0)
        session.add(key)
        job = Job(
            key_id=key.id,
            kind="text",
            model="gpt-4o-mini",
            request={"kind": "text", "prompt": "Write a haiku"},
            reserved_usd=reserved,
        )
        session.add(job)
    return job


def run_watched(engine, job_id: str) -> tuple[str, list[tuple[str, bool]]]:
    """Run the job; each statement sent, with whether it ran outside a transaction."""
    seen: list[tuple[str, bool]] = []

    def watch(conn, _cursor, statement, *_args) -> None:
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        seen.append((statement, autocommit))

    runner = Runner(
        engine=engine,
        provider=FakeProvider(usage=Usage(prompt_tokens=100, completion_tokens=50)),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1),
    )
    event.listen(engine, "before_cursor_execute", watch)
    try:
        outcome = runner.run(job_id, worker="w1")
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    return outcome, seen


def changed_during_call(engine, job_id: str, **changes) -> Runner:
    """A Runner whose model call first sets `changes` on the job's row (another process's write
    while the job runs)."""

    class Changing(FakeProvider):
        def generate_text(self, **kwargs):
            with session_scope(engine) as session:
                stored = session.get(Job, job_id)
                for name, value in changes.items():
                    setattr(stored, name, value)
                session.add(stored)
            return super().generate_text(**kwargs)

    return Runner(
        engine=engine, provider=Changing(), catalogue=get_catalogue(), retry=RetryPolicy()
    )


def test_a_plain_job_is_a_claim_and_an_end(engine):
    # Given a queued plain job (no conversation, webhook, batch or cache)
    job = queued_job(engine)
    # When it runs
    outcome, seen = run_watched(engine, job.id)
    # Then the claim is one UPDATE in autocommit (no BEGIN/COMMIT round trips), and the end is
    # one statement in autocommit on PostgreSQL (end, attempt and settlement), a transaction of
    # three on SQLite
    assert outcome == "succeeded"
    claim, *end = seen
    assert claim[0].startswith("UPDATE jobs") and claim[1] is True
    if engine.dialect.name == "postgresql":
        assert len(end) == 1 and end[0][0].startswith("WITH ended AS")
        assert end[0][1] is True
    else:
        assert [s.split()[0:3] for s, _ in end] == [
            ["UPDATE", "jobs", "SET"],
            ["INSERT", "INTO", "attempts"],
            ["UPDATE", "api_keys", "SET"],
        ]
        assert not any(autocommit for _, autocommit in end)  # the end is one transaction


def test_an_end_with_more_to_write_is_one_transaction(engine):
    # Given a running job that gained a webhook URL after its claim read none (what the alone
    # end's own guard is for: the Runner's view is only what the claim returned)
    job = queued_job(engine)
    runner = changed_during_call(engine, job.id, webhook_url="https://hooks.example.com/genq")
    # When it succeeds
    assert runner.run(job.id, worker="w1") == "succeeded"
    # Then its delivery was opened with the end, once, and the job billed once
    with session_scope(engine) as session:
        stored = session.get(Job, job.id)
        deliveries = session.exec(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id))
        assert len(deliveries.all()) == 1 and stored.webhook_id is not None
        assert len(list_attempts(session, job_id=job.id)) == 1
        assert session.get(ApiKey, job.key_id).spent_usd == stored.cost_usd > 0


def test_a_cancel_during_the_call_wins_over_the_alone_end(engine):
    # Given a running plain job whose cancel is requested during its call
    job = queued_job(engine)
    runner = changed_during_call(engine, job.id, cancel_requested=True)
    # When the call returns
    assert runner.run(job.id, worker="w1") == "cancelled"
    # Then the job is cancelled without output, its one call billed once
    with session_scope(engine) as session:
        stored = session.get(Job, job.id)
        attempts = list_attempts(session, job_id=job.id)
        spent = session.get(ApiKey, job.key_id).spent_usd
    assert stored.status == "cancelled" and stored.output_text is None
    assert [a.outcome for a in attempts] == ["cancelled"]
    assert spent == stored.cost_usd == attempts[0].cost_usd > 0


def test_the_one_statement_end_bills_once_and_settles_the_reservation(engine):
    # Given a job holding 0.01 USD of its key's 1 USD budget
    job = queued_job(engine, budget=Decimal(1), reserved=Decimal("0.01"))
    # When it succeeds
    assert run_watched(engine, job.id)[0] == "succeeded"
    # Then its one attempt, the job's cost and the key's spending agree, and nothing stays held
    with session_scope(engine) as session:
        stored = session.get(Job, job.id)
        key = session.get(ApiKey, job.key_id)
        attempts = list_attempts(session, job_id=job.id)
    expected = (100 * Decimal("0.15") + 50 * Decimal("0.60")) / 10**6
    assert [a.cost_usd for a in attempts] == [expected] == [stored.cost_usd]
    assert attempts[0].outcome == "succeeded" and attempts[0].worker == "w1"
    assert attempts[0].prompt_tokens == 100 and attempts[0].latency_ms >= 0
    assert key.spent_usd == expected and key.reserved_usd == Decimal(0)
    assert stored.reserved_usd == Decimal(0) and stored.lease_until is None


def test_a_key_without_a_budget_only_spends(engine):
    job = queued_job(engine)
    assert run_watched(engine, job.id)[0] == "succeeded"
    with session_scope(engine) as session:
        key = session.get(ApiKey, job.key_id)
        cost = session.get(Job, job.id).cost_usd
    assert key.spent_usd == cost > 0 and key.reserved_usd == Decimal(0)


def planned_values(**extra) -> dict:
    return {
        "key_id": "k" * 32,
        "kind": "text",
        "model": "gpt-4o-mini",
        "request": {"kind": "text", "prompt": "Write a haiku"},
        "reserved_usd": Decimal("0.01"),
        **extra,
    }


def test_a_new_job_is_what_the_constructor_makes():
    made, built = new_job(planned_values()), Job(**planned_values())
    # every field and default as the constructor sets it; the per-job defaults made fresh
    fields = {name: getattr(built, name) for name in Job.model_fields}
    assert {name: getattr(made, name) for name in Job.model_fields} == {
        **fields,
        "id": made.id,
        "created_at": made.created_at,
    }
    assert made.id != built.id and len(made.id) == 32 and made.created_at.tzinfo is not None
    assert made.meta == {} and made.meta is not new_job(planned_values()).meta
    assert made.model_fields_set == built.model_fields_set
    assert made.model_dump() == {**built.model_dump(), "id": made.id, "created_at": made.created_at}


def test_a_new_job_is_a_transient_orm_object_the_session_stores(engine):
    with session_scope(engine) as session:
        key, _ = create_key(session, name="new-job")
        key_id = key.id
    job = new_job(planned_values(key_id=key_id, meta={"campaign": "spring"}))
    assert inspect(job).transient
    job.status = "running"  # a change is tracked as on any new job
    assert inspect(job).attrs.status.history.added == ["running"]
    with session_scope(engine) as session:
        session.add(job)
    with session_scope(engine) as session:
        stored = session.get(Job, job.id)
        assert (stored.status, stored.meta, stored.reserved_usd) == (
            "running",
            {"campaign": "spring"},
            Decimal("0.01"),
        )
        assert stored.attempts == 0 and stored.cancel_requested is False
