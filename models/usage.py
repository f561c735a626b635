"""Usage reporting: what was spent, summed from attempt rows (the single record of spending).

Attempts are grouped by their own model and day (a job that fell back to another model bills
each model for its own attempts); jobs and outstanding reservations by the job's model, day of
submission, key and status.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import case, func, type_coerce
from sqlmodel import Session, col, select

from models.attempts import Attempt
from models.db import Money, db_moment
from models.errors import InvalidRequest
from models.jobs import Job
from models.keys import ApiKey
from models.moderation import BLOCKED

GroupBy = Literal["model", "day", "key", "status"]


def parse_bound(value: str | None, *, end: bool = False) -> datetime | None:
    """`2026-11-01` or an ISO datetime; a bare date as `to` includes that whole day."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{value!r} is not an ISO date or datetime") from None
    if len(value) == 10:  # a date: from its start, or to the end of it
        moment = datetime.combine(date.fromisoformat(value), time()) + timedelta(days=end)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _groups(group_by: GroupBy):
    """(column for attempts, column for jobs) of each grouping."""
    return {
        "model": (col(Attempt.model), col(Job.model)),
        "day": (func.date(col(Attempt.started_at)), func.date(col(Job.created_at))),
        "key": (col(Job.key_id), col(Job.key_id)),
        "status": (col(Job.status), col(Job.status)),
    }[group_by]


def _filters(session: Session, column, key_id: str | None, start, end) -> list:
    where = [col(Job.key_id) == key_id] if key_id else []
    if start:
        where.append(column >= db_moment(session, start))
    if end:
        where.append(column < db_moment(session, end))
    return where


def _attempt_sums(session, group, where) -> dict:
    query = (
        select(
            group.label("g"),
            func.count(col(Attempt.id)).label("attempts"),
            func.coalesce(func.sum(col(Attempt.prompt_tokens)), 0).label("prompt"),
            func.coalesce(func.sum(col(Attempt.completion_tokens)), 0).label("completion"),
            type_coerce(func.coalesce(func.sum(col(Attempt.cost_usd)), 0), Money).label("cost"),
        )
        .join(Job, col(Job.id) == col(Attempt.job_id))
        .where(*where)
        .group_by(group)
    )
    return {str(row.g): row for row in session.exec(query)}


def _job_sums(session, group, where) -> dict:
    query = (
        select(
            group.label("g"),
            func.count(col(Job.id)).label("jobs"),
            func.count(case((col(Job.error_type) == BLOCKED, 1))).label("blocked"),
            type_coerce(func.coalesce(func.sum(col(Job.reserved_usd)), 0), Money).label("reserved"),
            # only cache hits have a saving (models/cache.py), so counting it counts hits
            func.count(col(Job.cache_saved_usd)).label("hits"),
            type_coerce(func.coalesce(func.sum(col(Job.cache_saved_usd)), 0), Money).label("saved"),
        )
        .where(*where)
        .group_by(group)
    )
    return {str(row.g): row for row in session.exec(query)}


def _row(attempts, jobs) -> dict:
    prompt = int(attempts.prompt) if attempts else 0
    completion = int(attempts.completion) if attempts else 0
    return {
        "jobs": jobs.jobs if jobs else 0,
        "attempts": attempts.attempts if attempts else 0,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": Decimal(attempts.cost) if attempts else Decimal(0),
        "reserved_usd": Decimal(jobs.reserved) if jobs else Decimal(0),
        "moderation_blocked": jobs.blocked if jobs else 0,
        "cache_hits": jobs.hits if jobs else 0,
        "saved_usd": Decimal(jobs.saved) if jobs else Decimal(0),
    }


def usage_report(
    session: Session,
    *,
    key_id: str | None,
    group_by: GroupBy,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict:
    """Per group and in total: jobs, attempts, tokens, cost, reserved and the jobs moderation
    blocked; money in Decimal."""
    attempt_group, job_group = _groups(group_by)
    spent = _attempt_sums(
        session, attempt_group, _filters(session, col(Attempt.started_at), key_id, start, end)
    )
    held = _job_sums(session, job_group, _filters(session, col(Job.created_at), key_id, start, end))
    names = _key_names(session) if group_by == "key" else {}
    data = []
    for group in sorted(set(spent) | set(held)):
        row = {group_by: group, **_row(spent.get(group), held.get(group))}
        if group_by == "key":
            row["name"] = names.get(group)
        data.append(row)
    total = {k: sum(r[k] for r in data) for k in _row(None, None)}
    return {"group_by": group_by, "data": data, "total": total}


def _key_names(session: Session) -> dict[str, str]:
    return {k.id: k.name for k in session.exec(select(ApiKey))}
