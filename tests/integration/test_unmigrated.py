"""An API on a database `genq migrate` has not (fully) run on: 503 naming the fix, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from api.main import create_app
from models.db import get_engine
from models.migrate import NOT_MIGRATED, upgrade
from models.settings import Settings
from tests.helpers import auth

PROBLEM = "application/problem+json"
ROUTES = [
    ("POST", "/v1/jobs", {"kind": "text", "prompt": "x"}),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/abc", None),
    ("GET", "/v1/usage", None),
    ("GET", "/v1/stats", None),
]


@pytest.fixture
def unmigrated(empty_database_url, clean_redis, tiktoken_dir) -> Settings:
    return Settings(
        _env_file=None,
        database_url=empty_database_url,
        redis_url=clean_redis,
        provider="offline",
        tiktoken_cache_dir=tiktoken_dir,
    )


def assert_not_migrated(response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["detail"] == NOT_MIGRATED


def test_an_empty_database_is_not_ready_and_every_route_says_run_migrate(unmigrated):
    with TestClient(create_app(unmigrated)) as client:
        # /readyz names the reason instead of answering 200
        assert_not_migrated(client.get("/readyz"))
        # and the routes answer the same 503 (not a 500 on PostgreSQL's undefined table)
        for method, path, body in ROUTES:
            assert_not_migrated(
                client.request(method, path, json=body, headers=auth("genq_whatever"))
            )
        # Once migrated, the running API is ready without a restart
        upgrade(unmigrated.database_url)
        assert client.get("/readyz").json()["status"] == "ready"


def test_a_database_behind_the_code_is_not_ready_until_migrated(unmigrated):
    upgrade(unmigrated.database_url, "0002")
    with TestClient(create_app(unmigrated)) as client:
        assert_not_migrated(client.get("/readyz"))
        upgrade(unmigrated.database_url)
        assert client.get("/readyz").status_code == 200


def test_a_database_migrated_by_a_newer_release_keeps_this_api_ready(unmigrated):
    # Given a schema one revision ahead of this code (a rolling upgrade migrates first)
    upgrade(unmigrated.database_url)
    with get_engine(unmigrated.database_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_next_release'"))
    # Then the API still running this release stays ready (migrations are additive)
    with TestClient(create_app(unmigrated)) as client:
        assert client.get("/readyz").json()["status"] == "ready"


def test_readiness_asks_the_schema_revision_only_until_it_is_current(unmigrated):
    upgrade(unmigrated.database_url)
    statements: list[str] = []
    engine = get_engine(unmigrated.database_url)
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with TestClient(create_app(unmigrated)) as client:
        assert client.get("/readyz").status_code == 200
        assert any("alembic_version" in s for s in statements)
        statements.clear()
        for _ in range(3):
            assert client.get("/readyz").status_code == 200
        # afterwards each readiness probe costs its SELECT 1 and nothing more
        assert statements == ["SELECT 1"] * 3
