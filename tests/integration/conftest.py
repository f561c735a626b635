"""Fixtures of the integration tests: the app in-process, a fresh API key, a PostgreSQL
database and its engines."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.main import create_app
from models.db import make_engine
from models.migrate import upgrade
from tests.conftest import _postgres_database
from tests.helpers import auth, new_key


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def key(settings) -> dict[str, str]:
    """`Authorization` headers of a new key without a budget."""
    return auth(new_key(settings.database_url))


@pytest.fixture
def pg_url():
    for url in _postgres_database():
        upgrade(url)
        yield url


@pytest.fixture
def pg_engines(pg_url):
    """(direct, through SQLAlchemy): the same database; a cursor listener makes the second
    take SQLAlchemy's execution, as tracing would."""
    direct, watched = make_engine(pg_url), make_engine(pg_url)
    event.listen(watched, "before_cursor_execute", lambda *args: None)
    yield direct, watched
    direct.dispose()
    watched.dispose()
