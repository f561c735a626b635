"""Claims of jobs that arrive together, made by one statement (issue 17, the in-flight wave).

A worker with many threads that takes a burst of messages (a thousand queued jobs released at
once) claimed each with its own statement: a pooled connection, a round trip and a commit each,
and the GIL won back after each. Here the threads' claims are grouped (worker/grouping.py):
one that finds no claim in progress claims its own job at once; those that arrive while a claim
is in progress are claimed together by one statement (models/jobs.py `claim_many`) for the same
worker name. Each job is claimed exactly as alone: one atomic UPDATE per group, a row for each
job it moved from queued to running, none for a job another delivery took.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine, Row

from models.jobs import claim_many
from worker.grouping import MAX_GROUP, Grouped

__all__ = ["MAX_GROUP", "ClaimGroups"]

ClaimMany = Callable[..., dict[str, Row]]
#: (job id, worker name)
_Claim = tuple[str, str]


class ClaimGroups(Grouped[_Claim, Row | None]):
    """One per worker process (the Runner's): its threads' claims, grouped while one runs."""

    def __init__(self, engine: Engine, *, lease_s: int, claim: ClaimMany = claim_many):
        super().__init__()
        self.engine, self.lease_s, self._claim = engine, lease_s, claim

    def claim(self, job_id: str, worker: str) -> Row | None:
        """The job's row if this call claimed it, else None (as `models.jobs.claim`)."""
        return self._submit((job_id, worker))

    def _same(self, item: _Claim) -> str:
        return item[1]  # one statement claims for one worker name

    def _run_group(self, items: list[_Claim]) -> list[Row | None]:
        job_ids = list(dict.fromkeys(job_id for job_id, _ in items))
        rows = self._claim(self.engine, job_ids=job_ids, worker=items[0][1], lease_s=self.lease_s)
        # a job twice in one group (redelivered): claimed once, by the first thread
        return [rows.pop(job_id, None) for job_id, _ in items]
