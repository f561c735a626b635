"""Budgets: reserve a job's worst case at submit, settle it to the real cost at finish.

Both are single conditional UPDATEs, so concurrent submits cannot overspend: PostgreSQL locks
the key's row, SQLite the whole database, for the length of the statement's transaction. A key
without a budget reserves nothing (a budget is fixed when the key is created), so its submits
never queue behind one another on that row lock. Both flush the session's pending writes first:
they are Core statements (no autoflush), and whatever runs after them would run under the key
row's lock until commit.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import bindparam, case, literal, update
from sqlmodel import Session

from models.db import Money, utcnow
from models.errors import BudgetExceeded
from models.keys import ApiKey
from models.money import money


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


#: Built once, with bind parameters, on the table (a statement built per call, or an ORM one,
#: is keyed again on every execution: ~0.6 ms of CPU each).
_KEYS = ApiKey.__table__.c
#: a monthly budget starts again at 0 spent in a new month (reservations carry over)
_ROLL_PERIOD = (
    update(ApiKey.__table__)
    .where(
        _KEYS.id == bindparam("key_id"),
        _KEYS.budget_period == "monthly",
        _KEYS.period_start < bindparam("start"),
    )
    .values(spent_usd=Decimal(0), period_start=bindparam("start"))
)
_RESERVE = (
    update(ApiKey.__table__)
    .where(
        _KEYS.id == bindparam("key_id"),
        _KEYS.spent_usd + _KEYS.reserved_usd + bindparam("amount", type_=Money())
        <= _KEYS.budget_usd,
    )
    .values(reserved_usd=_KEYS.reserved_usd + bindparam("amount", type_=Money()))
)


def reserve(
    session: Session,
    *,
    key: ApiKey,
    amount: Decimal,
    now: datetime | None = None,
    needs: str = "this job may cost up to",
) -> None:
    """Hold `amount` against the key's budget, or raise BudgetExceeded (402; `needs` says what
    the amount is for)."""
    if key.budget_usd is None:
        return
    session.flush()
    start = month_start(now or utcnow())
    session.execute(_ROLL_PERIOD, {"key_id": key.id, "start": start})
    result = session.execute(_RESERVE, {"key_id": key.id, "amount": amount})
    if result.rowcount != 1:
        key = session.get(ApiKey, key.id, populate_existing=True)
        left = (key.budget_usd or Decimal(0)) - key.spent_usd - key.reserved_usd
        raise BudgetExceeded(
            f"{needs} {money(amount)} USD but the key's {key.budget_period} "
            f"budget has {money(max(left, Decimal(0)))} USD left (budget "
            f"{money(key.budget_usd or 0)}, spent {money(key.spent_usd)}, "
            f"reserved {money(key.reserved_usd)})"
        )


def settle_values(cost) -> dict:
    """The key row's SET clause for a finished job: release its reservation (a key without a
    budget reserved nothing at submit, so only its spending moves) and charge `cost`, a bound
    value or, in the worker's one-statement end on PostgreSQL, the ended job's column."""
    return {
        "reserved_usd": _KEYS.reserved_usd
        - case(
            (_KEYS.budget_usd.is_(None), literal(Decimal(0), Money())),
            else_=bindparam("reserved", type_=Money()),
        ),
        "spent_usd": _KEYS.spent_usd + cost,
    }


_SETTLE = (
    update(ApiKey.__table__)
    .where(_KEYS.id == bindparam("key_id"))
    .values(**settle_values(bindparam("cost", type_=Money())))
)


def settle(session: Session, *, key_id: str, reserved: Decimal, cost: Decimal) -> None:
    """Release a finished job's reservation and charge what it really cost."""
    session.flush()
    session.execute(_SETTLE, {"key_id": key_id, "reserved": reserved, "cost": cost})
