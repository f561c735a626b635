"""What wraps every task run: the log context that follows a job across processes, and counters.

The API assigns a request id (`X-Request-ID`) and sends it as the Celery message header
`genq_request_id`; binding it here puts it on every log line the run writes, beside the job id,
so `grep <request id>` finds a job from submit to finish in the API's and the workers' logs.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from celery import Task

from models.db import session_scope
from models.jobs import Job
from models.queue import REQUEST_ID_HEADER
from models.settings import get_settings
from worker import metrics
from worker.runner import Runner

log = structlog.get_logger("genq.worker")


def request_id_of(request: Any) -> str | None:
    """The API's request id from a task request's message headers, if the message has one."""
    value = getattr(request, REQUEST_ID_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(REQUEST_ID_HEADER)
    return str(value)[:128] if value else None


def log_context(request: Any, job_id: str) -> dict[str, str]:
    """Fields bound on every log line of one task run."""
    context = {"job_id": job_id, "task_id": str(request.id)}
    request_id = request_id_of(request)
    if request_id:
        context["request_id"] = request_id
    return context


def message_headers() -> dict[str, str] | None:
    """Headers for a message a worker publishes itself (a rescheduled retry): same request id."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return {REQUEST_ID_HEADER: request_id} if request_id else None


def run_observed(task: Task, job_id: str, runner: Runner) -> str:
    """Run one job with its log context bound, counting the delivery and the work in flight."""
    request = task.request
    with (
        structlog.contextvars.bound_contextvars(**log_context(request, job_id)),
        metrics.IN_PROGRESS.track_inprogress(),
    ):
        if get_settings().log_prompts:
            _log_prompt(runner, job_id)
        outcome = runner.run(job_id, worker=request.hostname or "unknown")
    metrics.record_delivery(task.name, outcome)
    return outcome


def _log_prompt(runner: Runner, job_id: str) -> None:
    """Only with GENQ_LOG_PROMPTS=true: the prompt (or messages) of the job, for debugging."""
    with session_scope(runner.engine) as session:
        job = session.get(Job, job_id)
        request = dict(job.request) if job is not None else {}
    prompt = request.get("prompt") or json.dumps(request.get("messages", []), ensure_ascii=False)
    log.info("job.prompt", prompt=prompt)
