"""Creating an OpenAI-compatible batch: its input file, read line by line, becomes queued jobs.

The file is never loaded whole: each line is parsed, translated (models/batch_lines.py) and
planned by the cost policy as `POST /v1/jobs` would plan it, and the planned jobs are inserted
in chunks (models/bulk_insert.py: COPY on PostgreSQL, else one executemany each) inside ONE
transaction, which also reserves the whole batch's worst case against the key's budget and
stores the batch. So a batch is all or nothing: a bad
line rolls the jobs back and stores the batch `failed` with `errors` (no job), a budget that
cannot cover it is a 402 with nothing stored. Once committed, the jobs are published in Redis
pipelines on the batch lanes (api/enqueue.py `Publisher.publish_batch`); were Redis down, they
stay stored and unpublished for the sweeper (the outbox), never lost.

On SQLite the transaction holds the database's write lock from the first chunk to the commit
(a few seconds for 50,000 lines); PostgreSQL locks only the key's row, at the end.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import update
from sqlmodel import Session

from api.services import Services
from models.batch_lines import LineError, parse_line, planning_error
from models.batch_schemas import BatchCreate
from models.batches import FAILED_BATCH, IN_PROGRESS, Batch, new_batch_id
from models.budgets import reserve
from models.bulk_insert import insert_jobs
from models.db import session_scope, utcnow
from models.errors import BudgetExceeded, InvalidRequest, NotReady
from models.files import StoredFile, get_file, open_file_content
from models.jobs import QUEUED, Job, job_values
from models.keys import ApiKey
from models.moderation import resolve_mode, with_mode
from models.planning import MEMO_SIZE, plan_job

log = structlog.get_logger("genq.api")
#: jobs per executemany
INSERT_CHUNK = 1_000
#: a failed batch reports at most this many line errors (validation stops there)
MAX_REPORTED_ERRORS = 100
KIND_BY_ENDPOINT = {"/v1/chat/completions": "text", "/v1/images/generations": "image"}
_JOBS = Job.__table__


class _LinesRefused(Exception):
    """Raised inside the transaction so that the jobs inserted so far roll back."""


@dataclass
class _Intake:
    """One batch being read: its jobs so far, their worst case, and the lines refused."""

    batch_id: str
    key: ApiKey
    now: datetime
    #: the completion window (GENQ_BATCH_COMPLETION_WINDOW_S): each job's deadline too
    window_s: int
    lines: int = 0
    reserved: Decimal = Decimal(0)
    job_ids: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: plans by what decides them (models/planning.py `plan_job`'s memo)
    plans: dict = field(default_factory=dict)
    #: each plan's routing record, by the plan's id (the plan kept alive beside it)
    records: dict = field(default_factory=dict)

    def refuse(self, line: int | None, error: LineError) -> None:
        self.errors.append(
            {"code": error.code, "message": error.message, "param": error.param, "line": line}
        )
        self.rows.clear()


def create_batch(services: Services, *, key: ApiKey, body: BatchCreate) -> Batch:
    """Read, check and plan the file's lines; store the jobs and the batch, or the failed batch."""
    with session_scope(services.engine) as session:
        stored = get_file(session, file_id=body.input_file_id, key_id=key.id)
    if stored.purpose != "batch":
        raise InvalidRequest(
            f"file {stored.id} has purpose {stored.purpose!r}; a batch reads a `batch` file",
            errors=[{"loc": ["body", "input_file_id"], "msg": "not a `batch` file"}],
        )
    window_s = services.settings.batch_completion_window_s
    intake = _Intake(batch_id=new_batch_id(), key=key, now=utcnow(), window_s=window_s)
    batch = Batch(
        id=intake.batch_id,
        key_id=key.id,
        endpoint=body.endpoint,
        input_file_id=stored.id,
        completion_window=body.completion_window,
        meta=body.metadata,
        created_at=intake.now,
        expires_at=intake.now + timedelta(seconds=window_s),
    )
    try:
        with session_scope(services.engine) as session:
            _store_jobs(services, session, intake, stored, body.endpoint)
            _reserve(session, intake)
            _started(batch, intake)
            session.add(batch)
    except _LinesRefused:
        return _store_failed(services, batch, intake)
    _publish(services, intake, KIND_BY_ENDPOINT[body.endpoint])
    return batch


def _reserve(session: Session, intake: _Intake) -> None:
    """The whole batch's worst case, or 402 (the transaction rolls back: nothing stored)."""
    try:
        reserve(session, key=intake.key, amount=intake.reserved)
    except BudgetExceeded as exc:
        what = f"this batch of {len(intake.job_ids)} requests"
        raise BudgetExceeded(exc.detail.replace("this job", what, 1)) from None


def _started(batch: Batch, intake: _Intake) -> None:
    batch.status, batch.in_progress_at = IN_PROGRESS, intake.now
    batch.total, batch.reserved_usd = len(intake.job_ids), intake.reserved


def _store_failed(services: Services, batch: Batch, intake: _Intake) -> Batch:
    batch.status, batch.failed_at = FAILED_BATCH, utcnow()
    batch.errors = {"object": "list", "data": intake.errors}
    with session_scope(services.engine) as session:
        session.add(batch)
    log.info("batch.failed_validation", batch_id=batch.id, errors=len(intake.errors))
    return batch


def _store_jobs(
    services: Services, session: Session, intake: _Intake, stored: StoredFile, endpoint: str
) -> None:
    """Every line planned, checked and inserted in chunks; raises _LinesRefused on bad lines."""
    settings = services.settings
    if stored.bytes > settings.max_file_bytes:
        limit = settings.max_file_bytes
        intake.refuse(None, LineError("file_too_large", f"the file exceeds {limit} bytes"))
    for number, raw in _lines(stored, settings.max_body_bytes):
        if len(intake.errors) >= MAX_REPORTED_ERRORS:
            break
        intake.lines += 1
        if intake.lines > settings.batch_max_lines:
            message = f"the file holds more than {settings.batch_max_lines} requests"
            intake.refuse(number, LineError("too_many_lines", message))
            break
        _take_line(services, intake, number, raw, endpoint)
        if len(intake.rows) >= INSERT_CHUNK:
            _flush(session, intake)
    if intake.lines == 0 and not intake.errors:
        intake.refuse(None, LineError("empty_file", "the file holds no requests"))
    if intake.errors:
        raise _LinesRefused
    _flush(session, intake)


def _lines(stored: StoredFile, max_line: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, bytes) of each non-blank line; None for a line over `max_line`."""
    with open_file_content(stored) as handle:
        number = 0
        while raw := handle.readline(max_line + 1):
            number += 1
            if len(raw) > max_line and not raw.endswith(b"\n"):
                while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the long line, a piece at a time
                yield number, None
            elif raw.strip():
                yield number, raw


def _take_line(
    services: Services, intake: _Intake, number: int, raw: bytes | None, endpoint: str
) -> None:
    """One line planned into a row (with its moderation mode resolved as a submit's), or
    refused."""
    moderation = services.settings.moderation
    try:
        if raw is None:
            limit = services.settings.max_body_bytes
            raise LineError("line_too_large", f"the line exceeds {limit} bytes")
        request = parse_line(raw, endpoint=endpoint)
        if request.custom_id in intake.seen:
            message = f"The custom_id {request.custom_id!r} is a duplicate of an earlier line's."
            raise LineError("duplicate_custom_id", message, "custom_id")
        intake.seen.add(request.custom_id)
        try:
            plan = plan_job(request.job, services.catalogue, services.defaults, intake.plans)
        except InvalidRequest as exc:
            raise planning_error(exc) from None
    except LineError as error:
        intake.refuse(number, error)
        return
    if intake.errors:
        return  # the batch fails: the rest is only checked
    mode = resolve_mode(request.job.policy.moderation, intake.key.moderation, moderation)
    row = _row(intake, with_mode(request.job, mode), plan, number, request.custom_id)
    intake.reserved += plan.estimated_cost_usd
    intake.rows.append(row)


def _row(intake: _Intake, job: Any, plan: Any, number: int, custom_id: str) -> dict[str, Any]:
    values = job_values(
        key_id=intake.key.id,
        body=job,
        plan=plan,
        deadline_s=intake.window_s,
        now=intake.now,
    )
    values["metadata"] = values.pop("meta")
    # lines that share a plan share its routing record: models/bulk_insert.py writes it once
    if len(intake.records) >= MEMO_SIZE:
        intake.records.clear()
    values["routing"] = intake.records.setdefault(id(plan), (plan, values["routing"]))[1]
    job_id = secrets.token_hex(16)  # the shape of uuid4().hex, without building a UUID
    intake.job_ids.append(job_id)
    return {
        **values,
        **_ROW_DEFAULTS,
        "id": job_id,
        "batch_id": intake.batch_id,
        "custom_id": custom_id,
        "batch_line": number,
    }


#: what a new job row holds besides its plan (Core inserts apply no model defaults)
_ROW_DEFAULTS: dict[str, Any] = {
    "status": QUEUED,
    "attempts": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cost_usd": Decimal(0),
    "image_count": 0,
    "cancel_requested": False,
}


def _flush(session: Session, intake: _Intake) -> None:
    insert_jobs(session, intake.rows)
    intake.rows.clear()


def _publish(services: Services, intake: _Intake, kind: str) -> None:
    """Queue the batch's jobs; if the broker fails, the sweeper publishes what is left."""
    try:
        services.publisher.publish_batch((job_id, kind) for job_id in intake.job_ids)
    except NotReady:
        log.warning("batch.publish_deferred", batch_id=intake.batch_id)
        with session_scope(services.engine) as session:
            session.execute(
                update(_JOBS)
                .where(_JOBS.c.batch_id == intake.batch_id, _JOBS.c.status == QUEUED)
                .values(published_at=None)
            )
