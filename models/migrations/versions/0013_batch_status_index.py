"""batch status index: jobs (batch_id, status), partial, replaces ix_jobs_batch

As each batch job ends its worker asks whether the batch has an unfinished job: with the status
in the index that is one seek, not a scan of the batch's 50,000 rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

HAS_BATCH = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_batch")
        batch_op.create_index(
            "ix_jobs_batch_status",
            ["batch_id", "status"],
            postgresql_where=HAS_BATCH,
            sqlite_where=HAS_BATCH,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_batch_status")
        batch_op.create_index(
            "ix_jobs_batch", ["batch_id"], postgresql_where=HAS_BATCH, sqlite_where=HAS_BATCH
        )
