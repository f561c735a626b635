"""The worker's part in a batch's end: finalize it when its last job ends, sweep the rest.

A worker that ends a batch job asks whether the batch has an unfinished job (one index seek,
only for batch jobs) and, if not, queues a `genq.finalize_batch` task; the claim into
`finalizing` (models/batch_run.py) lets one caller build the files. The sweeper
(worker/sweeper.py) also expires batches past their window, stops jobs of cancelled ones and
finalizes every batch it finds done: the safety net when a worker died between the two.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy.engine import Engine

from models.batch_output import build_claimed, finalize_batch
from models.batch_run import (
    batches_to_finalize,
    expire_due,
    has_unfinished_jobs,
    reclaim_finalizing,
    stop_stopping,
)
from models.db import session_scope

log = structlog.get_logger("genq.worker")
#: (batch id, kind of its jobs): queue the batch's finalize task
Enqueue = Callable[[str, str], None]


def after_batch_job(engine: Engine, *, batch_id: str, kind: str, enqueue: Enqueue) -> bool:
    """A job of the batch ended: queue the batch's finalize when none is left; whether it did.
    A failure here is only logged (the job has ended; the sweeper finalizes the batch)."""
    try:
        with session_scope(engine) as session:
            if has_unfinished_jobs(session, batch_id=batch_id):
                return False
        enqueue(batch_id, kind)
    except Exception as exc:  # the database or the broker is restarting
        log.warning("batch.finalize_not_queued", batch_id=batch_id, error=type(exc).__name__)
        return False
    return True


def finalize(engine: Engine, batch_id: str) -> str | None:
    """The finalize task's work: the batch's final status, or None when there was none to do."""
    status = finalize_batch(engine, batch_id=batch_id)
    if status:
        log.info("batch.finalized", batch_id=batch_id, status=status)
    return status


def sweep_batches(engine: Engine) -> dict[str, int]:
    """Expire overdue batches, stop jobs of stopping ones, finalize the done ones."""
    with session_scope(engine) as session:
        expired = expire_due(session)
    with session_scope(engine) as session:
        stopped = stop_stopping(session)
    with session_scope(engine) as session:
        done, stale = batches_to_finalize(session)
    finalized = sum(finalize(engine, batch_id) is not None for batch_id in done)
    for batch in stale:
        with session_scope(engine) as session:
            mine = reclaim_finalizing(session, batch=batch)
        if mine and build_claimed(engine, batch_id=batch.id):
            log.warning("batch.finalized_again", batch_id=batch.id)
            finalized += 1
    if expired or stopped or finalized:
        log.info("sweeper.batches", expired=len(expired), stopped=stopped, finalized=finalized)
    return {"expired": len(expired), "stopped": stopped, "finalized": finalized}
