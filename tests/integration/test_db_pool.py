"""The PostgreSQL pool without pre-ping: a connection the server closed is replaced at checkout."""

from __future__ import annotations

import socket
import time

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from models import db
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


def test_connections_keep_their_path_alive_with_tcp_keepalives(engine):
    # an idle pooled connection probes its peer: a NAT or firewall keeps its path, and a
    # silently dead peer turns the socket into an error the checkout's poll sees
    with engine.connect() as conn:
        params = conn.connection.dbapi_connection.info.get_parameters()
    assert params["keepalives"] == "1" and params["keepalives_idle"] == "30"
    assert engine.pool._recycle == 1800


def test_genq_db_pre_ping_adds_the_ping_back(monkeypatch):
    # Given GENQ_DB_PRE_PING=true, for networks where keepalives are not enough
    from models.db import make_engine
    from models.settings import get_settings

    monkeypatch.setenv("GENQ_DB_PRE_PING", "true")
    get_settings.cache_clear()
    database = _postgres_database()
    engine = make_engine(next(database))
    pings: list[str] = []
    original = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append("ping") or original(conn)
    try:
        # When two units of work run (the second checks out the pooled connection)
        for _ in range(2):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        # Then the pooled connection was pinged at its checkout
        assert pings == ["ping"]
    finally:
        engine.dispose()
        database.close()
        get_settings.cache_clear()


def test_a_server_that_never_answers_fails_the_connect_in_time(monkeypatch):
    """A host that takes the TCP connection and then says nothing (or drops packets) fails the
    connect after CONNECT_TIMEOUT_S, not after the kernel's retries."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    try:
        port = silent.getsockname()[1]
        monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2)
        engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            engine.connect()
        assert time.monotonic() - started < 30
        engine.dispose()
    finally:
        silent.close()
