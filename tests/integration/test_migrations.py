"""Alembic migrations: empty → head on both databases, and the schema matches the tables."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import models.attempts
import models.conversations  # noqa: F401  (with attempts: registers every table)
from models.db import get_engine
from models.migrate import current_revision, head_revision, upgrade


def test_empty_database_migrates_to_head_and_matches_the_models(empty_database_url):
    # Given an empty database
    assert current_revision(empty_database_url) is None
    # When it is migrated
    upgrade(empty_database_url)
    # Then it is at head, has every table, and autogenerate finds nothing left to do
    assert current_revision(empty_database_url) == head_revision(empty_database_url)
    engine = get_engine(empty_database_url)
    tables = {"api_keys", "jobs", "attempts", "images", "conversations", "conversation_turns"}
    assert tables <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_older_database_upgrades_and_migrating_twice_is_harmless(empty_database_url):
    upgrade(empty_database_url, "base")
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision(empty_database_url)
