"""response cache: a job's request hash, the job it reuses or waits for, what that saved

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from models.db import Money

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: the partial indexes of models/jobs.py: jobs without the cache add no entry to any of them
CACHED = "request_hash IS NOT NULL"
CACHE_LEADER = (
    "request_hash IS NOT NULL AND cache_source_id IS NULL AND status IN ('queued', 'running')"
)
CACHE_FOLLOWER = "cache_source_id IS NOT NULL AND status = 'queued'"


def _where(predicate: str) -> dict:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("cache_source_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("cache_saved_usd", Money(), nullable=True))
        batch_op.create_index(
            "ix_jobs_cache_lookup", ["key_id", "request_hash", "finished_at"], **_where(CACHED)
        )
        batch_op.create_index(
            "uq_jobs_cache_leader",
            ["key_id", "request_hash"],
            unique=True,
            **_where(CACHE_LEADER),
        )
        batch_op.create_index(
            "ix_jobs_cache_followers", ["cache_source_id"], **_where(CACHE_FOLLOWER)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_cache_followers")
        batch_op.drop_index("uq_jobs_cache_leader")
        batch_op.drop_index("ix_jobs_cache_lookup")
        batch_op.drop_column("cache_saved_usd")
        batch_op.drop_column("cache_source_id")
        batch_op.drop_column("request_hash")
