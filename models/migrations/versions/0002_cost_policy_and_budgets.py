"""cost policy and budgets: routing record and reservation per job, budgets per key

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from models.db import Money

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("budget_usd", Money(), nullable=True))
        batch_op.add_column(
            sa.Column("budget_period", sa.String(length=16), nullable=False, server_default="total")
        )
        batch_op.add_column(
            sa.Column(
                "period_start",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.current_timestamp(),
            )
        )
        batch_op.add_column(sa.Column("spent_usd", Money(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("reserved_usd", Money(), nullable=False, server_default="0"))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reserved_usd", Money(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("routing", sa.JSON(), nullable=True))

    # Keys created before budgets existed start with what their jobs already cost.
    op.execute(
        "UPDATE api_keys SET spent_usd = (SELECT COALESCE(SUM(jobs.cost_usd), 0) FROM jobs "
        "WHERE jobs.key_id = api_keys.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("routing")
        batch_op.drop_column("reserved_usd")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("reserved_usd")
        batch_op.drop_column("spent_usd")
        batch_op.drop_column("period_start")
        batch_op.drop_column("budget_period")
        batch_op.drop_column("budget_usd")
