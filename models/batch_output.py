"""A finished batch's output and error files, in OpenAI's line format, streamed from the jobs.

Output file: one line per succeeded job, in input line order, `response.body` shaped as the
endpoint answers (a ChatCompletion, an ImagesResponse). Error file: every other line; a request
that failed has `response` with an error status and body (as OpenAI writes them), a line the
batch's cancel or expiry stopped has `error {code: batch_cancelled | batch_expired}`. Each job
is one row, read once, so every line is answered exactly once, whoever builds the files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Engine, Row
from sqlmodel import Session

from models.attempts import Attempt, Image
from models.batch_lines import IMAGE_FORMAT_KEY
from models.batch_run import BATCH_CANCELLED, BATCH_EXPIRED, claim_finalizing, final_status
from models.batches import CANCELLED, EXPIRED, FINALIZING, Batch, batch_tally
from models.db import session_scope, utcnow
from models.files import store_output_file, unix
from models.jobs import CANCELLED as JOB_CANCELLED
from models.jobs import SUCCEEDED, Job

#: rows fetched per round trip while streaming a batch's jobs
STREAM_ROWS = 1000
#: a failed request's status code by its error type, when no provider status (>= 400) says
#: better: the request's fault 4xx (a content filter's block is OpenAI's 400), the provider's
#: or its network's 502, genq's own 500 (`internal_error`, `config`: the fallback)
STATUS_BY_ERROR = {
    "timeout": 408,
    "unknown_model": 400,
    "invalid_output": 422,
    "budget_exceeded": 402,
    "moderation_blocked": 400,
    "moderation_unavailable": 503,
    "rate_limited": 429,
    "insufficient_quota": 429,
    "provider_error": 502,
    "connection_error": 502,
    "stream_broken": 502,
    "image_download_failed": 502,
    "image_too_large": 502,
    "image_url_refused": 502,
    "invalid_image": 502,
}

_JOBS, _ATTEMPTS = Job.__table__.c, Attempt.__table__.c
_LAST_STATUS = (
    select(_ATTEMPTS.http_status)
    .where(_ATTEMPTS.job_id == _JOBS.id)
    .order_by(_ATTEMPTS.number.desc())
    .limit(1)
    .scalar_subquery()
)
_IMAGE_BYTES = (
    select(Image.__table__.c.data)
    .where(Image.__table__.c.job_id == bindparam("job_id"))
    .order_by(Image.__table__.c.index)
)
_COLUMNS = (
    _JOBS.id,
    _JOBS.custom_id,
    _JOBS.kind,
    _JOBS.model,
    _JOBS.status,
    _JOBS.output_text,
    _JOBS.output_data,
    _JOBS.finish_reason,
    _JOBS.image_count,
    _JOBS.prompt_tokens,
    _JOBS.completion_tokens,
    _JOBS.finished_at,
    _JOBS["metadata"].label("meta"),
    _JOBS.error_type,
    _JOBS.error_message,
)


def _chat_body(job: Row) -> dict[str, Any]:
    """An OpenAI ChatCompletion built from the job's output and usage."""
    message: dict[str, Any] = {"role": "assistant", "content": job.output_text, "refusal": None}
    if (job.output_data or {}).get("tool_calls"):
        message["tool_calls"] = job.output_data["tool_calls"]
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": unix(job.finished_at),
        "model": job.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": job.finish_reason}
        ],
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens,
        },
        "system_fingerprint": None,
    }


def _images_body(session: Session, job: Row) -> dict[str, Any]:
    """An OpenAI ImagesResponse: each image by its genq URL (same key, `GET` it), or its bytes
    in base64 when the line asked for `response_format: b64_json`."""
    if (job.meta or {}).get(IMAGE_FORMAT_KEY) == "b64_json":
        found = session.execute(_IMAGE_BYTES, {"job_id": job.id}).scalars()
        data = [{"b64_json": base64.b64encode(raw).decode()} for raw in found]
    else:
        data = [{"url": f"/v1/jobs/{job.id}/images/{i}"} for i in range(job.image_count)]
    return {
        "created": unix(job.finished_at),
        "data": data,
        "usage": {
            "input_tokens": job.prompt_tokens,
            "output_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens,
        },
    }


def output_line(session: Session, job: Row) -> dict[str, Any]:
    body = _chat_body(job) if job.kind == "text" else _images_body(session, job)
    response = {"status_code": 200, "request_id": job.id, "body": body}
    return {
        "id": f"batch_req_{job.id}",
        "custom_id": job.custom_id,
        "response": response,
        "error": None,
    }


def error_line(job: Row, batch_status: str) -> dict[str, Any]:
    """A failed request's answer, or the error of a line the batch stopped."""
    line: dict[str, Any] = {"id": f"batch_req_{job.id}", "custom_id": job.custom_id}
    if job.status == JOB_CANCELLED:
        code = {CANCELLED: BATCH_CANCELLED, EXPIRED: BATCH_EXPIRED}.get(batch_status)
        code = code or job.error_type or "cancelled"
        message = job.error_message or "the request was cancelled"
        return line | {"response": None, "error": {"code": code, "message": message}}
    status = job.last_status if (job.last_status or 0) >= 400 else None
    error = {
        "message": job.error_message or "the request failed",
        "type": job.error_type,
        "param": None,
        "code": job.error_type,
    }
    response = {
        "status_code": status or STATUS_BY_ERROR.get(job.error_type or "", 500),
        "request_id": job.id,
        "body": {"error": error},
    }
    return line | {"response": response, "error": None}


def _rows(session: Session, batch_id: str, *, succeeded: bool) -> Iterator[Row]:
    chosen = _JOBS.status == SUCCEEDED if succeeded else _JOBS.status != SUCCEEDED
    columns = _COLUMNS if succeeded else (*_COLUMNS, _LAST_STATUS.label("last_status"))
    query = (
        select(*columns)
        .where(_JOBS.batch_id == batch_id, chosen)
        .order_by(_JOBS.batch_line)
        .execution_options(yield_per=STREAM_ROWS)
    )
    yield from session.execute(query)


def _encoded(lines: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for line in lines:
        yield json.dumps(line, separators=(",", ":")).encode() + b"\n"


_CLOSE = (
    update(Batch.__table__)
    .where(
        Batch.__table__.c.id == bindparam("batch_id"),
        Batch.__table__.c.status == FINALIZING,
        Batch.__table__.c.finalizing_at == bindparam("claimed"),
    )
    .values(
        status=bindparam("status"),
        output_file_id=bindparam("output_file_id"),
        error_file_id=bindparam("error_file_id"),
    )
)


class TakenOver(Exception):
    """The sweeper reclaimed the batch from this builder: its files are not the batch's."""

    def __init__(self, paths: list[str]):
        super().__init__(paths)
        self.paths = paths


def build_files(session: Session, batch: Batch, directory: Path | None = None) -> str:
    """Write the files of a batch claimed in `finalizing` and end it; its final status. Raises
    TakenOver when another builder took it over meanwhile (the caller rolls back)."""
    status = final_status(batch)
    counts = batch_tally(session, batch_id=batch.id)["by_status"]
    done = counts.get(SUCCEEDED, 0)
    ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
    written: list[str] = []
    for name, succeeded, any_lines in (
        ("output_file_id", True, done),
        ("error_file_id", False, sum(counts.values()) - done),
    ):
        if any_lines:
            rows = _rows(session, batch.id, succeeded=succeeded)
            lines = (output_line(session, r) if succeeded else error_line(r, status) for r in rows)
            kind = "output" if succeeded else "error"
            stored = store_output_file(
                session,
                key_id=batch.key_id,
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                lines=_encoded(lines),
                directory=directory,
            )
            ids[name] = stored.id
            written.append(stored.path)
    # an expired batch keeps the moment its window passed
    moment = {"completed": "completed_at", "cancelled": "cancelled_at"}.get(status)
    params = {"batch_id": batch.id, "claimed": batch.finalizing_at, "status": status, **ids}
    closing = _CLOSE.values({moment: utcnow()}) if moment else _CLOSE
    if session.execute(closing, params).rowcount != 1:
        raise TakenOver(written)
    return status


def finalize_batch(engine: Engine, *, batch_id: str, directory: Path | None = None) -> str | None:
    """Claim the batch into `finalizing` if all its jobs ended, then build its files and end it;
    its final status, or None when there was nothing to do (not done, or another caller won)."""
    with session_scope(engine) as session:
        if not claim_finalizing(session, batch_id=batch_id):
            return None
    return build_claimed(engine, batch_id=batch_id, directory=directory)


def build_claimed(engine: Engine, *, batch_id: str, directory: Path | None = None) -> str | None:
    """Build the files of a batch already in `finalizing` (claimed, or reclaimed by the sweeper)."""
    try:
        with session_scope(engine) as session:
            batch = session.get(Batch, batch_id)
            if batch is None or batch.status != FINALIZING:
                return None
            return build_files(session, batch, directory)
    except TakenOver as lost:
        for path in lost.paths:
            Path(path).unlink(missing_ok=True)
        return None
