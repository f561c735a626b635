"""The hot lone statements straight on psycopg write and read exactly what SQLAlchemy's own
execution does (models/lone.py): the same rows, the same errors, the connection lent back as
it was lent. PostgreSQL only: on SQLite the statements always go through SQLAlchemy."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from models.catalogue import get_catalogue
from models.db import make_engine, session_scope
from models.jobs import Job, claim, store_job_alone
from models.keys import ApiKey, create_key
from models.lone import LoneStatement
from models.pricing import Usage
from tests.helpers import FakeProvider, row_as_text, text_job_row
from worker.retry import RetryPolicy
from worker.runner import Runner


@pytest.fixture
def direct_runs(monkeypatch) -> list[str]:
    """The SQL of each statement run straight on psycopg."""
    ran: list[str] = []
    original = LoneStatement._run

    def spy(self, engine, params, *, fetch):
        ran.append(str(self.statement).split()[0])
        return original(self, engine, params, fetch=fetch)

    monkeypatch.setattr(LoneStatement, "_run", spy)
    return ran


def _job(engine, name: str) -> str:
    with session_scope(engine) as session:
        key, _ = create_key(session, name=name, budget_usd=Decimal("5"))
        key.reserved_usd = Decimal("0.0000300000")
        session.add(key)
        job = text_job_row(key.id)
        session.add(job)
    return job.id


def _runner(engine) -> Runner:
    return Runner(
        engine=engine,
        provider=FakeProvider(usage=Usage(prompt_tokens=100, completion_tokens=50)),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1),
    )


def test_a_plain_job_straight_on_psycopg_writes_what_sqlalchemy_writes(pg_engines, direct_runs):
    direct, watched = pg_engines
    fast, slow = _job(direct, "direct"), _job(watched, "watched")
    assert _runner(direct).run(fast, worker="w") == "succeeded"
    assert direct_runs == ["UPDATE", "WITH"]  # the claim and the end, nothing else
    assert _runner(watched).run(slow, worker="w") == "succeeded"
    assert direct_runs == ["UPDATE", "WITH"]  # a listened-to engine went through SQLAlchemy

    assert row_as_text(direct, "jobs", "id", fast) == row_as_text(direct, "jobs", "id", slow)
    assert row_as_text(direct, "attempts", "job_id", fast) == row_as_text(
        direct, "attempts", "job_id", slow
    )
    with session_scope(direct) as session:
        keys = [session.get(ApiKey, session.get(Job, i).key_id) for i in (fast, slow)]
        assert [(k.spent_usd, k.reserved_usd) for k in keys] == [
            (keys[1].spent_usd, Decimal(0)),
            (keys[1].spent_usd, Decimal(0)),
        ]
        assert keys[0].spent_usd > 0


def test_the_claim_row_is_the_one_sqlalchemy_returns(pg_engines, direct_runs):
    direct, watched = pg_engines
    fast, slow = _job(direct, "direct"), _job(watched, "watched")
    ours = claim(direct, job_id=fast, worker="w", lease_s=60)
    theirs = claim(watched, job_id=slow, worker="w", lease_s=60)
    assert direct_runs == ["UPDATE"]
    differ = {"id", "claim_token", "key_id", "deadline_at"}
    assert ours._fields == tuple(theirs._fields)
    for name in ours._fields:
        mine, other = getattr(ours, name), getattr(theirs, name)
        assert type(mine) is type(other), name
        if name not in differ:
            assert mine == other, name
    assert ours.reserved_usd == Decimal("0.0000300000")
    assert claim(direct, job_id=fast, worker="w", lease_s=60) is None  # already running


def test_a_stored_job_is_the_row_sqlalchemy_stores(pg_engines, direct_runs):
    direct, watched = pg_engines
    with session_scope(direct) as session:
        key, _ = create_key(session, name="store")
    made = {
        "key_id": key.id,
        "kind": "text",
        "model": "gpt-4o-mini",
        "request": {"kind": "text", "prompt": "Ünïcode ✓ and a 'quote'"},
        "estimated_cost_usd": Decimal("0.00001725"),
        "reserved_usd": Decimal("0.0000172500"),
    }
    fast, slow = Job(**made), Job(**made)  # routing None: JSON null or SQL NULL, the same
    store_job_alone(direct, fast)
    store_job_alone(watched, slow)
    assert direct_runs == ["INSERT"]
    assert row_as_text(direct, "jobs", "id", fast.id) == row_as_text(direct, "jobs", "id", slow.id)


def test_an_error_is_sqlalchemys_and_the_connection_comes_back_as_lent(pg_url, direct_runs):
    engine = make_engine(pg_url)
    engine.pool.dispose()
    with session_scope(engine) as session:
        key, _ = create_key(session, name="twice")
    job = Job(key_id=key.id, kind="text", model="gpt-4o-mini", request={"kind": "text"})
    store_job_alone(engine, job)
    with pytest.raises(sa.exc.IntegrityError):
        store_job_alone(engine, Job(**{**job.model_dump(), "request": {"kind": "text"}}))
    assert engine.pool.checkedin() == 1  # the same one connection, lent back
    with engine.connect() as conn:  # out of autocommit again: a transaction rolls back whole
        conn.execute(sa.text("UPDATE jobs SET model = 'changed' WHERE id = :i"), {"i": job.id})
        conn.rollback()
        assert conn.execute(sa.text("SELECT model FROM jobs")).scalar_one() == "gpt-4o-mini"
    engine.dispose()


def _terminate_pooled(engine, url: str) -> None:
    """The server ends the backend of the engine's pooled connection (a restart, a failover)."""
    with engine.connect() as conn:
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    admin = make_engine(url)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": backend})
    admin.dispose()


def test_a_connection_the_server_dropped_is_replaced(pg_url, direct_runs):
    engine = make_engine(pg_url)
    first = _job(engine, "dropped")
    _terminate_pooled(engine, pg_url)
    row = claim(engine, job_id=first, worker="w", lease_s=60)
    assert row is not None and row.id == first
    engine.dispose()


def test_a_database_that_refuses_connections_is_sqlalchemys_operational_error(direct_runs):
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    job = Job(key_id="k", kind="text", model="gpt-4o-mini", request={"kind": "text"})
    with pytest.raises(sa.exc.OperationalError):  # what the API answers 503 to (api/errors.py)
        store_job_alone(engine, job)
    assert direct_runs == ["INSERT"]
    engine.dispose()


def test_a_statement_on_a_dropped_connection_invalidates_the_pool(pg_url, monkeypatch):
    engine = make_engine(pg_url)
    job_id = _job(engine, "failover")
    monkeypatch.setattr("models.db.hung_up", lambda _conn: False)  # unseen until it is used
    _terminate_pooled(engine, pg_url)
    with pytest.raises(sa.exc.OperationalError) as raised:
        claim(engine, job_id=job_id, worker="w", lease_s=60)
    assert raised.value.connection_invalidated
    assert engine.pool._invalidate_time > 0  # every older connection is replaced at checkout
    row = claim(engine, job_id=job_id, worker="w", lease_s=60)  # a fresh connection
    assert row is not None and row.id == job_id
    engine.dispose()


def test_a_connection_is_never_lent_in_autocommit(pg_url):
    engine = make_engine(pg_url)
    engine.pool.dispose()
    leaked = engine.raw_connection()
    leaked.dbapi_connection.autocommit = True  # as if interrupted between on and off
    leaked.close()
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not None
        assert conn.connection.dbapi_connection.autocommit is False
    engine.dispose()


def test_a_missing_value_is_refused_before_anything_is_sent(pg_url, direct_runs):
    engine = make_engine(pg_url)
    statement = LoneStatement(sa.text("SELECT :a AS a, :b AS b").columns(a=sa.Text, b=sa.Text))
    with pytest.raises(sa.exc.ArgumentError, match="bind parameters b"):
        statement.first(engine, {"a": "x"})
    assert tuple(statement.first(engine, {"a": "x", "b": "y"})) == ("x", "y")
    engine.dispose()
