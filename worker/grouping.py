"""Statements that a worker's threads need at the same moment, made as one (issue 17).

A worker with a thousand threads gets its work in waves: a thousand queued jobs claimed at
once, a thousand answers coming back together. Each claim and each end alone cost its thread a
pooled connection, a round trip, a commit and the GIL won back. `Grouped` lets the threads take
turns as leader and followers: a thread that finds nothing in progress runs its own item at
once (an idle worker waits for nobody); threads arriving while a group is in progress wait, and
when it ends the first of them runs every waiting item (up to `max_group`, and only those that
`_same` puts with its own) as one group, hands each thread its result, and leaves the next
group to the next waiting thread. What a group does with its items is the subclass's
(`_run_group`): worker/claims.py claims them with one statement, worker/ends.py writes their
ends in one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: the most items one group takes (a burst waits for several groups, each short)
MAX_GROUP = 64


@dataclass(eq=False)
class _Waiting(Generic[Item]):
    """One thread's item, then its result or the group's error."""

    item: Item
    done: threading.Event = field(default_factory=threading.Event)
    #: set instead of a result: this thread runs the next group
    leads: bool = False
    result: Any = None
    error: BaseException | None = None


class Grouped(Generic[Item, Result]):
    """One per worker process and kind of statement: its threads' items, grouped while one
    group runs."""

    max_group = MAX_GROUP

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[_Waiting[Item]] = []
        self._busy = False

    def _run_group(self, items: list[Item]) -> list[Result]:
        """Each item's result, in order; raising gives every thread of the group the error."""
        raise NotImplementedError

    def _same(self, item: Item) -> Hashable:
        """What items of one group share (by default nothing: any items group together)."""
        return None

    def _submit(self, item: Item) -> Result:
        """This item's result, as `_run_group` made it, alone or in a group."""
        mine = _Waiting(item)
        with self._lock:
            self._waiting.append(mine)
            leads, self._busy = not self._busy, True
        if not leads:
            mine.done.wait()
            leads = mine.leads
        if leads:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self) -> None:
        """Run the first waiting item and those waiting that go with it; hand each thread its
        result (or the error), then wake the next group's first thread."""
        with self._lock:
            same = self._same(self._waiting[0].item)
            group = [w for w in self._waiting if self._same(w.item) == same][: self.max_group]
            self._waiting = [w for w in self._waiting if w not in group]  # identity (eq=False)
        try:
            results = self._run_group([waiting.item for waiting in group])
            for waiting, result in zip(group, results, strict=True):
                waiting.result = result
        except BaseException as exc:  # every thread of the group raises it, as if alone
            for waiting in group:
                waiting.error = exc
        finally:
            for waiting in group:
                waiting.leads = False
                waiting.done.set()
            with self._lock:
                if self._waiting:
                    self._waiting[0].leads = True
                    self._waiting[0].done.set()
                else:
                    self._busy = False
