"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL through psycopg 3."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from sqlalchemy import BigInteger, Numeric, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, create_engine

#: money is stored as exact decimals: NUMERIC(20,10) on PostgreSQL, integer 1e-10 USD on SQLite
MONEY_SCALE = 10
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the tables use."""
    return datetime.now(UTC)


def db_moment(session, moment: datetime) -> datetime:
    """A UTC datetime as the session's database compares it: SQLite stores naive UTC."""
    if session.bind.dialect.name == "sqlite":
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


class Money(TypeDecorator):
    """USD as `Decimal` in Python, never a float in the database (SQLite has no DECIMAL)."""

    impl = Numeric(20, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        exact = Decimal(value).quantize(_QUANTUM)
        return int(exact.scaleb(MONEY_SCALE)) if dialect.name == "sqlite" else exact

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-MONEY_SCALE)
        return Decimal(value).quantize(_QUANTUM)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


#: an idle connection's socket has nothing to read unless the server hung up (it sends its
#: FATAL "terminating connection" and closes on a restart or pg_terminate_backend)
_HUNG_UP = select.POLLIN | select.POLLERR | select.POLLHUP


def hung_up(dbapi_conn) -> bool:
    """Whether PostgreSQL closed this idle psycopg connection: one poll(2) of its socket."""
    if dbapi_conn.closed:
        return True
    poller = select.poll()
    poller.register(dbapi_conn.pgconn.socket, _HUNG_UP)
    return bool(poller.poll(0))


def _check_on_checkout(dbapi_conn, _record, _proxy) -> None:
    """The pre-ping, without its round trip: a connection the server hung up on is replaced
    before use (the pool retries the checkout with a fresh connection). A connection is always
    lent out of autocommit: a lone statement (models/lone.py) interrupted between switching it
    on and off (an asynchronous exception) cannot leave its next user without transactions."""
    if hung_up(dbapi_conn):
        raise DisconnectionError("the server closed the connection")
    if dbapi_conn.autocommit:
        dbapi_conn.autocommit = False


#: libpq's TCP keepalives: a probe after 30 s idle, every 10 s, 3 unanswered = dead
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
#: a server that drops packets instead of refusing them fails a connect after this long, not
#: after the kernel's SYN retries (~2 min): `genq api`/`genq worker`'s start check, a checkout
CONNECT_TIMEOUT_S = 10


def make_engine(url: str) -> Engine:
    """An engine tuned per backend; SQLite gets WAL so API and workers can share the file."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pool_pre_ping by default (a `SELECT 1` round trip on every checkout, ~0.3 ms of CPU
    # each, twice per job): the checkout polls the socket instead, TCP keepalives keep an idle
    # connection's path open through NATs and firewalls (and find a dead peer), and connections
    # are renewed after 30 min (docs/performance.md; GENQ_DB_PRE_PING=true adds the ping back).
    from models.settings import get_settings  # here: settings import what imports this module

    engine = create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_recycle=1800,
        pool_pre_ping=get_settings().db_pre_ping,
        connect_args={
            "options": "-c timezone=UTC",
            "connect_timeout": CONNECT_TIMEOUT_S,
            **KEEPALIVES,
        },
    )
    event.listen(engine, "checkout", _check_on_checkout)
    return engine


@lru_cache
def get_engine(url: str) -> Engine:
    """One engine per URL per process."""
    return make_engine(url)


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection whose every statement commits on its own: for a write that is one atomic
    statement, no BEGIN and no COMMIT (on PostgreSQL one round trip instead of three), and as
    durable (an autocommit statement commits synchronously before it returns)."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on error. Callers never commit by hand."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
