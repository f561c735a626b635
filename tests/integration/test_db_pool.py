"""The PostgreSQL pool without pre-ping: a connection the server closed is replaced at checkout."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from models.db import get_engine
from tests.conftest import PG_ADMIN_URL, _postgres_database


@pytest.fixture
def engine():
    database = _postgres_database()
    yield get_engine(next(database))
    database.close()


def terminate(pid: int) -> None:
    """End the backend and wait until it is gone (with a timeout it waits, PostgreSQL ≥ 14)."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
    admin.dispose()


def test_a_connection_the_server_closed_is_replaced_before_use(engine):
    # Given a pooled connection whose backend the server then terminated (as a restart does)
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    terminate(pid)
    # When the next unit of work checks a connection out
    with engine.connect() as conn:
        fresh = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    # Then it runs on a new backend instead of failing on the dead one
    assert fresh != pid


def test_a_checkout_sends_no_ping(engine):
    # the check is a poll of the socket: a unit of work sends only its own statements
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    dbapi_calls: list[str] = []
    original = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: dbapi_calls.append("ping") or original(conn)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 2"))
    finally:
        engine.dialect.do_ping = original
    assert sent == ["SELECT 2"] and dbapi_calls == []
