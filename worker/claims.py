"""Claims of jobs that arrive together, made by one statement (issue 17, the in-flight wave).

A worker with many threads that takes a burst of messages (a thousand queued jobs released at
once) claimed each with its own statement: a pooled connection, a round trip and a commit each,
and the GIL won back after each. Here the threads claim as leader and followers: a thread that
finds no claim in progress claims its own job at once (an idle worker waits for nobody); one
that arrives while a claim is in progress waits, and when it ends the first waiting thread
claims every job waiting by then (up to `MAX_GROUP`) with one statement
(models/jobs.py `claim_many`), hands each thread its row, and leaves the next group to the
next waiting thread. Each job is claimed exactly as alone: one atomic UPDATE per group, a row
for each job it moved from queued to running, none for a job another delivery took.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine, Row

from models.jobs import claim_many

#: the most jobs one claim statement takes (a burst waits for several groups, each short)
MAX_GROUP = 64

ClaimMany = Callable[..., dict[str, Row]]


@dataclass(eq=False)
class _Waiting:
    """One thread's claim: its job, then its row or the statement's error."""

    job_id: str
    worker: str
    done: threading.Event = field(default_factory=threading.Event)
    #: set instead of a row: this thread claims the next group
    leads: bool = False
    row: Row | None = None
    error: BaseException | None = None


class ClaimGroups:
    """One per worker process (the Runner's): its threads' claims, grouped while one runs."""

    def __init__(self, engine: Engine, *, lease_s: int, claim: ClaimMany = claim_many):
        self.engine, self.lease_s, self._claim = engine, lease_s, claim
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._claiming = False

    def claim(self, job_id: str, worker: str) -> Row | None:
        """The job's row if this call claimed it, else None (as `models.jobs.claim`)."""
        mine = _Waiting(job_id, worker)
        with self._lock:
            self._waiting.append(mine)
            leads, self._claiming = not self._claiming, True
        if not leads:
            mine.done.wait()
            leads = mine.leads
        if leads:
            self._claim_group()
        if mine.error is not None:
            raise mine.error
        return mine.row

    def _claim_group(self) -> None:
        """Claim the first waiting thread's job and the others waiting for the same worker name;
        then hand each its row (or the error) and wake the next group's first thread."""
        with self._lock:
            worker = self._waiting[0].worker
            group = [w for w in self._waiting if w.worker == worker][:MAX_GROUP]
            self._waiting = [w for w in self._waiting if w not in group]  # identity (eq=False)
        try:
            job_ids = list(dict.fromkeys(w.job_id for w in group))
            rows = self._claim(self.engine, job_ids=job_ids, worker=worker, lease_s=self.lease_s)
            for waiting in group:  # a job twice in one group (redelivered): claimed once
                waiting.row = rows.pop(waiting.job_id, None)
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
                    self._claiming = False
