"""Alembic migrations: empty → head on both databases, and the schema matches the tables."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import models.attempts
import models.batches
import models.conversations
import models.files  # noqa: F401  (with attempts: registers every table)
from models.db import get_engine, utcnow
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
    tables |= {"files", "batches"}
    assert tables <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_older_database_upgrades_and_migrating_twice_is_harmless(empty_database_url):
    upgrade(empty_database_url, "base")
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision(empty_database_url)


def _row(table: sa.Table, **values) -> dict:
    """A row for `table` as it is at an older revision: given values, plain fillers elsewhere."""
    fillers = [
        (sa.Boolean, False),
        (sa.Integer, 0),
        (sa.Numeric, 0),
        (sa.DateTime, utcnow()),
        (sa.JSON, {}),
        (sa.String, "x"),
    ]
    row = dict(values)
    for column in table.columns:
        if column.name in row or column.nullable or column.autoincrement is True:
            continue
        row[column.name] = next(v for kind, v in fillers if isinstance(column.type, kind))
    return row


def test_images_stored_before_0006_show_their_types_and_sizes(empty_database_url):
    # Given a database at 0005 holding a finished job with a JPEG and a PNG image
    upgrade(empty_database_url, "0005")
    engine = get_engine(empty_database_url)
    tables = sa.MetaData()
    tables.reflect(engine)
    jobs, images = tables.tables["jobs"], tables.tables["images"]
    with engine.begin() as conn:
        conn.execute(tables.tables["api_keys"].insert(), _row(tables.tables["api_keys"], id="k1"))
        conn.execute(jobs.insert(), _row(jobs, id="j1", key_id="k1", kind="image", image_count=2))
        for index, (kind, width) in enumerate([("image/jpeg", 40), ("image/png", 64)]):
            image = {"job_id": "j1", "index": index, "content_type": kind, "width": width}
            conn.execute(images.insert(), _row(images, **image, height=30, data=b"\x00"))
    # When it is migrated to head
    upgrade(empty_database_url)
    # Then the job row carries what its images really are
    with engine.connect() as conn:
        meta = conn.execute(sa.text("SELECT image_meta FROM jobs WHERE id = 'j1'")).scalar_one()
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert meta == [
        {"content_type": "image/jpeg", "width": 40, "height": 30},
        {"content_type": "image/png", "width": 64, "height": 30},
    ]
