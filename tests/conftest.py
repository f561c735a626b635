"""Shared fixtures: real Redis and real databases (SQLite, PostgreSQL); only models are faked.

A fixture that needs a service fails loudly when the service is missing; it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from models.migrate import upgrade
from models.settings import Settings
from models.tokens import install_encodings
from tests.helpers import private_redis

#: None: each test session starts its own redis-server (two suites never steal each other's jobs)
REDIS_URL = os.environ.get("GENQ_TEST_REDIS_URL")
PG_ADMIN_URL = os.environ.get(
    "GENQ_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def tiktoken_dir(tmp_path_factory) -> Path:
    return install_encodings(tmp_path_factory.mktemp("tiktoken"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if REDIS_URL is None:
        with private_redis() as url:
            yield url
        return
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} ({exc}); start it (see README)")
    yield REDIS_URL


@pytest.fixture
def clean_redis(redis_url) -> str:
    """Empty the test Redis database so no queued message leaks from one test into the next."""
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


def _postgres_database() -> Iterator[str]:
    name = f"genq_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL} ({exc.orig}); see README")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from models.db import get_engine

        get_engine(url).dispose()
        get_engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database of each kind genq supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'genq.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def database_url(empty_database_url) -> str:
    """A fresh database migrated to head."""
    upgrade(empty_database_url)
    return empty_database_url


@pytest.fixture
def settings(database_url, clean_redis, tiktoken_dir, tmp_path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=clean_redis,
        provider="offline",
        tiktoken_cache_dir=tiktoken_dir,
        max_body_bytes=16_384,
        files_dir=tmp_path / "genq-files",
        retry_initial_s=0.01,
        retry_max_s=0.05,
    )
