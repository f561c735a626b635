"""Running one job, as a plain function of its id: claim, call the model with retries, finish.

Celery only wraps this (worker/tasks.py), so it is tested without a broker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy.engine import Engine
from tenacity import Retrying

from models.attempts import FAILED, RETRYABLE, SUCCEEDED, Attempt, Image, add_attempt
from models.catalogue import Catalogue, ModelSpec
from models.db import session_scope, utcnow
from models.errors import PermanentProviderError, ProviderError
from models.jobs import FAILED as JOB_FAILED
from models.jobs import SUCCEEDED as JOB_SUCCEEDED
from models.jobs import Job, claim_job, finish_job, owned_job
from models.logging import redact
from models.pricing import Usage, cost_of
from models.schemas import JobCreate
from worker import metrics
from worker.providers.base import ImageResult, Provider, TextResult
from worker.retry import RetryPolicy

log = structlog.get_logger("genq.worker")


class ClaimLost(Exception):
    """Another delivery owns the job now; this one must stop without writing."""


@dataclass(frozen=True, kw_only=True)
class Call:
    """One provider call in flight: which job, under which claim, which attempt."""

    job_id: str
    token: str
    number: int
    spec: ModelSpec
    worker: str
    started_at: datetime = field(default_factory=utcnow)
    clock: float = field(default_factory=time.perf_counter)

    def attempt(self, provider: str, *, outcome: str, usage: Usage, **extra) -> Attempt:
        return Attempt(
            job_id=self.job_id,
            number=self.number,
            model=self.spec.id,
            provider=provider,
            worker=self.worker,
            outcome=outcome,
            started_at=self.started_at,
            latency_ms=round((time.perf_counter() - self.clock) * 1000),
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            images=usage.images,
            cost_usd=cost_of(self.spec, usage),
            **extra,
        )


@dataclass(kw_only=True)
class Runner:
    engine: Engine
    provider: Provider
    catalogue: Catalogue
    retry: RetryPolicy
    lease_s: int = 600
    sleep: object = time.sleep

    def run(self, job_id: str, *, worker: str = "local") -> str:
        """Run the job unless another delivery claimed it; returns what happened."""
        with session_scope(self.engine) as session:
            token = claim_job(session, job_id=job_id, worker=worker, lease_s=self.lease_s)
            job = session.get(Job, job_id) if token else None
        bound = log.bind(job_id=job_id, worker=worker)
        if token is None or job is None:
            bound.info("job.skipped", reason="unknown, already claimed or finished")
            return "skipped"
        bound = bound.bind(model=job.model, kind=job.kind)
        spec = self.catalogue.get(job.model)
        if spec is None:
            self._fail_unrunnable(job_id, token, f"model {job.model!r} left the catalogue")
            return "failed"
        request = JobCreate.model_validate(job.request)
        try:
            for attempt in Retrying(**self.retry.tenacity_kwargs(), sleep=self.sleep):
                with attempt:
                    call = Call(
                        job_id=job_id,
                        token=token,
                        spec=spec,
                        worker=worker,
                        number=attempt.retry_state.attempt_number,
                    )
                    self._attempt(call, request, bound.bind(attempt=call.number))
        except ProviderError:
            return "failed"
        except ClaimLost:
            bound.warning("job.claim_lost")
            return "lost"
        return "succeeded"

    def _attempt(self, call: Call, request: JobCreate, bound) -> None:
        bound.info("attempt.start")
        try:
            if request.kind == "text":
                result = self.provider.generate_text(
                    model=call.spec.id,
                    messages=request.chat_messages(),
                    params=request.text_params(),
                )
            else:
                result = self.provider.generate_image(
                    model=call.spec.id, prompt=request.prompt or "", params=request.image_params()
                )
        except ProviderError as exc:
            self._record_failure(call, exc, bound)
            raise
        except Exception as exc:  # a bug or an unexpected SDK shape: fail, never leave it running
            error = PermanentProviderError(
                redact(f"{type(exc).__name__}: {exc}"), kind="internal_error"
            )
            self._record_failure(call, error, bound)
            raise error from exc
        self._record_success(call, result, bound)

    def _owned(self, session, call: Call) -> Job:
        job = owned_job(session, job_id=call.job_id, token=call.token)
        if job is None:
            raise ClaimLost(call.job_id)
        return job

    def _record_failure(self, call: Call, exc: ProviderError, bound) -> None:
        final = not exc.retryable or call.number >= self.retry.max_attempts
        with session_scope(self.engine) as session:
            job = self._owned(session, call)
            job.provider = self.provider.name
            attempt = call.attempt(
                self.provider.name,
                outcome=FAILED if final else RETRYABLE,
                usage=Usage(),
                http_status=exc.status_code,
                error_type=exc.kind,
                error=exc.detail,
            )
            add_attempt(session, job=job, attempt=attempt)
            if final:
                finish_job(
                    session, job=job, status=JOB_FAILED, error_type=exc.kind, error=exc.detail
                )
        metrics.record_attempt(attempt, kind=call.spec.kind)
        bound.warning(
            "attempt.failed",
            status=exc.status_code,
            error_type=exc.kind,
            final=final,
            retry_after_s=exc.retry_after_s,
        )

    def _record_success(self, call: Call, result: TextResult | ImageResult, bound) -> None:
        with session_scope(self.engine) as session:
            job = self._owned(session, call)
            job.provider = self.provider.name
            attempt = call.attempt(self.provider.name, outcome=SUCCEEDED, usage=result.usage)
            add_attempt(session, job=job, attempt=attempt)
            if isinstance(result, TextResult):
                job.output_text = result.text
            else:
                for index, image in enumerate(result.images):
                    session.add(
                        Image(
                            job_id=job.id,
                            index=index,
                            data=image.data,
                            width=image.width,
                            height=image.height,
                            content_type=image.content_type,
                        )
                    )
                job.image_count = len(result.images)
            finish_job(session, job=job, status=JOB_SUCCEEDED)
        metrics.record_attempt(attempt, kind=call.spec.kind)
        bound.info(
            "job.succeeded",
            cost_usd=str(job.cost_usd),
            attempts=job.attempts,
            prompt_tokens=job.prompt_tokens,
            completion_tokens=job.completion_tokens,
        )

    def _fail_unrunnable(self, job_id: str, token: str, reason: str) -> None:
        with session_scope(self.engine) as session:
            job = owned_job(session, job_id=job_id, token=token)
            if job is not None:
                finish_job(
                    session, job=job, status=JOB_FAILED, error_type="unknown_model", error=reason
                )
