"""Ends of plain text jobs that finish together, written in one transaction (issue 17).

In the in-flight wave a thousand answers come back within about two seconds, and each job's end
(on PostgreSQL one statement: the guarded UPDATE, its attempt and the key's settlement,
worker/recording.py `_SUCCEED_ALONE`) cost its thread a pooled connection, a round trip and the
GIL won back. Here the ends are grouped (worker/grouping.py): one that finds no end in progress
runs its statement alone in autocommit, at once, as before; those that arrive meanwhile are
run together, each its own statement, in one psycopg pipeline and one COMMIT
(models/lone.py `LoneStatement.each`).

Each end is still exactly what it was alone: its own guard (this claim, running, no cancel
requested) decides whether it writes, and a job whose guard fails gets None as alone. What
grouping adds is handled here:
- the statements of one group take the keys' rows in one order (key id, then job id), so two
  worker processes writing groups at once cannot deadlock on two keys;
- a group that failed before its COMMIT wrote nothing (`NotWritten`): each end is then run
  again on its own, so one bad end cannot keep the others running until their leases expire;
- an error of the COMMIT itself (the connection lost, say) leaves unknown whether the group was
  written, so every thread raises it, as an autocommit statement lost the same way would: the
  end is not written twice (a job found ended is not this run's any more), and a job whose end
  was not written is run again once its lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from models.lone import LoneStatement, NotWritten
from worker.grouping import Grouped


@dataclass(frozen=True, eq=False)
class _End:
    """One job's end: its statement's values, and the key whose row it updates."""

    values: dict[str, Any]
    key_id: str


#: a group's result for an end its group did not write: run it again alone
_ALONE = object()


class EndGroups(Grouped[_End, Any]):
    """One per worker process (the Runner's): its threads' ends, grouped while one runs."""

    def __init__(self, engine: Engine, statement: LoneStatement):
        super().__init__()
        self.engine, self.statement = engine, statement

    def end(self, values: dict[str, Any], key_id: str) -> Any:
        """The end's RETURNING row, or None when its guard failed (as `statement.first`)."""
        ended = self._submit(_End(values, key_id))
        if ended is _ALONE:
            return self.statement.first(self.engine, values)
        return ended

    def _run_group(self, items: list[_End]) -> list[Any]:
        if len(items) == 1:  # nothing waited: the one statement, in autocommit
            return [self.statement.first(self.engine, items[0].values)]
        order = sorted(range(len(items)), key=lambda i: (items[i].key_id, _job(items[i])))
        try:
            rows = self.statement.each(self.engine, [items[i].values for i in order])
        except NotWritten:
            return [_ALONE] * len(items)
        ended: list[Any] = [None] * len(items)
        for i, row in zip(order, rows, strict=True):
            ended[i] = row
        return ended


def _job(end: _End) -> str:
    return end.values["job_id"]
