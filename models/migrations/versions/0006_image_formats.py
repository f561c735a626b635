"""image formats: each job's image types and sizes on the job; an image's size may be unknown (SVG)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_meta", sa.JSON(), nullable=True))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.alter_column("width", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("height", existing_type=sa.Integer(), nullable=True)
    _backfill()


def _backfill() -> None:
    """Jobs stored before this revision show what their stored images really are."""
    bind = op.get_bind()
    images = sa.table(
        "images",
        sa.column("job_id", sa.String),
        sa.column("index", sa.Integer),
        sa.column("content_type", sa.String),
        sa.column("width", sa.Integer),
        sa.column("height", sa.Integer),
    )
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("image_meta", sa.JSON))
    rows = bind.execute(
        sa.select(images.c.job_id, images.c.content_type, images.c.width, images.c.height).order_by(
            images.c.job_id, images.c.index
        )
    )
    for job_id, group in groupby(rows, key=lambda row: row.job_id):
        meta = [
            {"content_type": row.content_type, "width": row.width, "height": row.height}
            for row in group
        ]
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(image_meta=meta))


def downgrade() -> None:
    op.execute("UPDATE images SET width = 0 WHERE width IS NULL")
    op.execute("UPDATE images SET height = 0 WHERE height IS NULL")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.alter_column("height", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("width", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("image_meta")
