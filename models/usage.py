"""Usage reporting: sums over attempt rows, which are the single record of what was spent."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from sqlalchemy import func, type_coerce
from sqlmodel import Session, col, select

from models.attempts import Attempt
from models.db import Money
from models.jobs import Job

GroupBy = Literal["model", "day"]


def _group_column(group_by: GroupBy):
    if group_by == "model":
        return col(Attempt.model)
    return func.date(col(Attempt.started_at))


def usage_report(session: Session, *, key_id: str, group_by: GroupBy) -> dict:
    """Tokens, cost, attempts and jobs per group and in total, for one key's jobs."""
    group = _group_column(group_by).label("group")
    sums = (
        func.count(col(Attempt.id)).label("attempts"),
        func.count(func.distinct(col(Attempt.job_id))).label("jobs"),
        func.coalesce(func.sum(col(Attempt.prompt_tokens)), 0).label("prompt_tokens"),
        func.coalesce(func.sum(col(Attempt.completion_tokens)), 0).label("completion_tokens"),
        type_coerce(func.coalesce(func.sum(col(Attempt.cost_usd)), 0), Money).label("cost"),
    )
    base = select(*sums).join(Job, col(Job.id) == col(Attempt.job_id)).where(Job.key_id == key_id)
    rows = session.exec(base.add_columns(group).group_by(group).order_by(group)).all()
    total = session.exec(base).one()
    return {
        "group_by": group_by,
        "data": [{group_by: str(row.group), **_sums(row)} for row in rows],
        "total": _sums(total),
    }


def _sums(row) -> dict:
    cost = row.cost if isinstance(row.cost, Decimal) else Decimal(row.cost or 0)
    return {
        "jobs": row.jobs,
        "attempts": row.attempts,
        "prompt_tokens": int(row.prompt_tokens),
        "completion_tokens": int(row.completion_tokens),
        "total_tokens": int(row.prompt_tokens) + int(row.completion_tokens),
        "cost_usd": float(cost),
    }
