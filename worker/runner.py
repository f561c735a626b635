"""Running one job, as a plain function of its id: claim, call the model with retries, finish.

Celery only wraps this (worker/tasks.py), so it is tested without a broker. After a failed
attempt the retry policy decides (worker/retry.py: fail, retry after a wait, or `timeout` when
the wait would pass the deadline; 429s are bounded by the deadline, other failures by the
attempt count). Between attempts the Runner then, in this order: stops for a cancel request;
gives the job back to the queue when the worker is shutting down or the wait is long; moves to
the next fallback model when the current one keeps failing or is cooled down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import structlog
from sqlalchemy.engine import Engine, Row
from tenacity import RetryCallState, Retrying, retry_if_exception

from models.attempts import FAILED, RETRYABLE, SUCCEEDED, failed_attempts
from models.cache_flight import TIMEOUT, TIMEOUT_MESSAGE
from models.catalogue import Catalogue, ModelSpec
from models.db import session_scope, utcnow
from models.errors import PermanentProviderError, ProviderError
from models.jobs import CANCELLED, Job, aware
from models.jobs import FAILED as JOB_FAILED
from models.jobs import SUCCEEDED as JOB_SUCCEEDED
from models.lifecycle import release, unpublish
from models.logging import redact
from models.money import money
from models.pricing import Usage
from models.schemas import JobCreate
from models.tokens import count_request
from worker import metrics
from worker.claims import ClaimGroups
from worker.ends import EndGroups
from worker.flights import end_followers
from worker.health import LocalHealth, ModelHealth
from worker.lease import LeaseKeeper
from worker.moderation import ModerationConfig, ModerationEnded, Moderator, screen_of
from worker.output import InvalidOutput, checked
from worker.providers.base import ImageResult, Provider, TextResult
from worker.ratelimit import Limiter, NoLimiter
from worker.recording import (
    Call,
    ClaimLost,
    end_groups,
    finish_owned,
    record,
    record_orphan,
    record_output,
)
from worker.retry import Decision, Reschedule, RetryCounts, RetryPolicy, Verdict
from worker.run import Cancelled, JobTimeout, Run, said_by
from worker.streaming import Streaming

log = structlog.get_logger("genq.worker")
#: set when the worker process starts its warm shutdown: jobs waiting to retry go back to the queue
SHUTTING_DOWN = threading.Event()

#: what `Runner.run` returns when the job ended (not skipped, lost or given back to the queue)
ENDED = frozenset({"succeeded", "failed", "cancelled"})
Publish = Callable[[str, str, float, bool], None]  # (job id, kind, countdown s, batch lane)


@dataclass(kw_only=True)
class Runner:
    engine: Engine
    provider: Provider
    catalogue: Catalogue
    retry: RetryPolicy
    lease_s: int = 60
    sleep: Callable[[float], None] = time.sleep
    health: ModelHealth = field(default_factory=LocalHealth)
    limiter: Limiter = field(default_factory=NoLimiter)
    publish: Publish | None = None
    retry_inline_max_s: float = 5.0
    fallback_after: int = 2
    leases: LeaseKeeper | None = None
    #: this process's claims, grouped when its threads claim at once (worker/claims.py)
    claims: ClaimGroups | None = None
    #: this process's ends of plain text jobs, grouped the same way (worker/ends.py)
    ends: EndGroups | None = None
    #: told (batch id, kind) when a batch's job ended (worker/batches.py); plain jobs never call it
    batch_job_ended: Callable[[str, str], None] | None = None
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    #: stream jobs' attempts (worker/streaming.py); without a Redis client their events go nowhere
    streaming: Streaming | None = None

    def __post_init__(self) -> None:
        self.leases = self.leases or LeaseKeeper(self.engine, lease_s=self.lease_s)
        self.claims = self.claims or ClaimGroups(self.engine, lease_s=self.lease_s)
        self.ends = self.ends or end_groups(self.engine)
        self.moderator = Moderator.of(self)
        self.streaming = self.streaming or Streaming(provider=self.provider, engine=self.engine)

    def run(self, job_id: str, *, worker: str = "local") -> str:
        """Run the job unless another delivery claimed it; returns what happened."""
        job = self.claims.claim(job_id, worker)
        bound = log.bind(job_id=job_id, worker=worker)
        if job is None or job.claim_token is None:
            bound.info("job.skipped", reason="unknown, already claimed or finished")
            return "skipped"
        bound = bound.bind(model=job.model, kind=job.kind)
        outcome = self._start(job, job.claim_token, worker, bound)
        if job.request_hash is not None and outcome in ENDED:  # response cache: single flight
            end_followers(self.engine, job_id, self.publish)
        return self._ended(job.batch_id, job.kind, outcome)

    def _start(self, job: Row, token: str, worker: str, bound) -> str:
        """Run the claimed job, or end it at once: its cancel was requested during an earlier
        run that gave it back to the queue (reclaimed, rescheduled), or its model is gone."""
        if job.cancel_requested:  # read by the claim itself: no query, and never a call
            outcome = self._end_claimed(
                job, token, CANCELLED, "cancelled", "cancelled while running"
            )
            bound.info("job.cancelled", before_call=True)
            if (job.request or {}).get("stream"):
                self.streaming.ended(job.id, outcome)
            return outcome
        run = self._prepare(job, token, worker)
        if run is None:
            return self._end_claimed(
                job, token, JOB_FAILED, "unknown_model", f"model {job.model!r} left the catalogue"
            )
        with self.leases.hold(job.id, token):
            outcome = self._loop(run, bound)
        if run.request.stream:
            self.streaming.ended(job.id, outcome)
        return outcome

    def _end_claimed(self, job: Row, token: str, status: str, error_type: str, error: str) -> str:
        """End a job just claimed without calling the model (its budget settled, its webhook
        opened, by finish_job); what happened to it."""
        ended = finish_owned(
            self.engine,
            job_id=job.id,
            token=token,
            status=status,
            error_type=error_type,
            error=error,
        )
        return status if ended else "lost"

    def _ended(self, batch_id: str | None, kind: str, outcome: str) -> str:
        """A batch's job that ended may be its last: say so (a plain job does nothing here)."""
        if batch_id is not None and outcome in ENDED and self.batch_job_ended is not None:
            self.batch_job_ended(batch_id, kind)
        return outcome

    def _prepare(self, job: Row, token: str, worker: str) -> Run | None:
        request = JobCreate.model_validate(job.request)
        names = [job.model, *((job.routing or {}).get("fallbacks") or [])]
        models = [spec for name in names if (spec := self.catalogue.get(name))]
        if not models or models[0].id != job.model:
            return None
        counted = request.kind == "text" and any(
            self.limiter.counts_tokens(spec.id) for spec in models
        )
        tokens = (
            count_request(request.chat_messages(), request.params)
            + (request.params.get("max_tokens") or 0)
            if counted
            else 0
        )
        return Run(
            counts=self._counts(job),
            job_id=job.id,
            token=token,
            key_id=job.key_id,
            kind=job.kind,
            worker=worker,
            request=request,
            models=models,
            attempts_before=job.attempts,
            deadline_at=aware(job.deadline_at),
            tokens_estimate=tokens,
            reserved_usd=job.reserved_usd,
            conversation_id=job.conversation_id,
            context=job.context,
            batch_id=job.batch_id,
            webhook=job.webhook_url is not None,
            screen=screen_of(request, job.moderation, self.moderation),
        )

    def _counts(self, job: Row) -> RetryCounts:
        """What the job's retries used so far: nothing for a new job (no query), its failed
        attempts for a job given back to the queue."""
        if not job.attempts:
            return RetryCounts()
        with session_scope(self.engine) as session:
            return RetryCounts.from_attempts(failed_attempts(session, job_id=job.id))

    def _loop(self, run: Run, bound) -> str:
        retrying = Retrying(
            wait=lambda state: self._wait(run, state),
            retry=retry_if_exception(
                lambda exc: (
                    isinstance(exc, ProviderError)
                    and self._decide(run, exc).verdict is not Verdict.FAIL
                )
            ),
            reraise=True,
            sleep=self.sleep,
        )
        try:
            if run.screen is not None:
                self.moderator.check_input(run)
            for attempt in retrying:
                with attempt:
                    self._attempt(run, bound.bind(attempt=run.number))
        except ProviderError:
            return "failed"
        except ModerationEnded as ended:
            return ended.result
        except ClaimLost:
            bound.warning("job.claim_lost")
            return "lost"
        except Cancelled as stop:
            if not stop.args:  # stopped before a call; after one, the job was already ended
                self._end(run, CANCELLED, "cancelled", "cancelled while running")
            return "cancelled"
        except JobTimeout:
            self._end(run, JOB_FAILED, TIMEOUT, TIMEOUT_MESSAGE)
            return "failed"
        except Reschedule as again:
            return self._reschedule(run, again.delay_s, bound)
        return "succeeded"

    def _decide(self, run: Run, exc: ProviderError) -> Decision:
        """The retry policy's decision on this attempt's failure, made (and counted) once."""
        if run.decided is None or run.decided[0] != run.attempts_here:
            run.counts.note(exc)
            left = (run.deadline_at - utcnow()).total_seconds() if run.deadline_at else None
            run.decided = (run.attempts_here, self.retry.decide(exc, run.counts, seconds_left=left))
        return run.decided[1]

    def _wait(self, run: Run, state: RetryCallState) -> float:
        """Seconds until the next attempt, or a decision that ends this run."""
        decision = self._decide(run, state.outcome.exception())
        if decision.verdict is Verdict.TIMEOUT:
            raise JobTimeout
        return self.hold(decision.wait_s)

    def hold(self, delay: float) -> float:
        """`delay` when this thread may wait it out before a retry (of a call or of a
        moderation check); Reschedule when the worker is shutting down or the wait is long."""
        if SHUTTING_DOWN.is_set():
            raise Reschedule(delay)  # another worker retries it, and not before its Retry-After
        if delay > self.retry_inline_max_s and self.publish is not None:
            raise Reschedule(delay)  # do not hold a worker thread through a long wait
        return delay

    def _check_deadline(self, run: Run) -> datetime:
        """Now, unless the job's deadline has passed: the instant an attempt records as its
        start is the one checked, so no attempt starts (or is recorded as starting) after it."""
        now = utcnow()
        if run.deadline_at and now >= run.deadline_at:
            raise JobTimeout
        return now

    def _starts_at(self, run: Run, spec: ModelSpec) -> datetime:
        """The deadline checked again after the cancel query and the rate limiter's wait (both
        take time); a job out of time gives back the tokens the limiter charged its call."""
        try:
            return self._check_deadline(run)
        except JobTimeout:
            self.limiter.settle(spec.id, estimated=run.tokens_estimate, used=0)
            raise

    def _choose_model(self, run: Run) -> ModelSpec:
        """Move to the next fallback when the current model keeps failing or is cooled down."""
        while len(run.models) > 1 and (
            run.failures_here >= self.fallback_after or not self.health.available(run.spec.id)
        ):
            log.warning("job.fallback", job_id=run.job_id, model=run.spec.id, to=run.models[1].id)
            run.models.pop(0)
            run.failures_here = 0
        return run.spec

    def _attempt(self, run: Run, bound) -> None:
        self._check_deadline(run)  # no call starts after the deadline (a wait may overshoot)
        if run.attempts_here and self._cancel_requested(run):  # the claim checked the first
            raise Cancelled
        spec = self._choose_model(run)
        waited = self.limiter.acquire(spec.id, run.tokens_estimate)
        metrics.observe_rate_limit_wait(spec.id, waited)
        call = Call(
            job_id=run.job_id,
            token=run.token,
            key_id=run.key_id,
            number=run.number,
            spec=spec,
            worker=run.worker,
            provider=self.provider.name,
            started_at=self._starts_at(run, spec),
        )
        run.attempts_here += 1
        bound.info("attempt.start", model=spec.id)
        try:
            result = self._call(call, run.request)
        except ProviderError as exc:
            self._failed(run, call, exc, bound)
            raise
        self._succeeded(run, call, result, bound)

    def _call(self, call: Call, request: JobCreate) -> TextResult | ImageResult:
        try:
            if request.kind == "text":
                params = request.text_params()
                if request.stream:
                    return self.streaming.generate(call, request, params)
                result = self.provider.generate_text(
                    model=call.spec.id, messages=request.chat_messages(), params=params
                )
                return result if params.response_format is None else checked(result, params)
            return self.provider.generate_image(
                model=call.spec.id, prompt=request.prompt or "", params=request.image_params()
            )
        except (ProviderError, ClaimLost):
            raise
        except Exception as exc:  # a bug or an unexpected SDK shape: fail, never leave it running
            raise PermanentProviderError(
                redact(f"{type(exc).__name__}: {exc}"), kind="internal_error"
            ) from exc

    def _failed(self, run: Run, call: Call, exc: ProviderError, bound) -> None:
        decision = self._decide(run, exc)
        final = decision.verdict is Verdict.FAIL
        if exc.retryable:
            run.failures_here += 1
            if not isinstance(exc, InvalidOutput):  # a bad answer says nothing of health
                self.health.record_failure(call.spec.id)
            if exc.status_code == 429:
                self.limiter.on_rate_limited(call.spec.id)
        attempt = call.attempt(
            outcome=FAILED if final else RETRYABLE,
            usage=exc.usage or Usage(),  # billed when the provider did the work (InvalidOutput, …)
            http_status=exc.status_code,
            error_type=exc.kind,
            error=exc.detail,
        )
        # a billed attempt used that much of the reservation: held again for the next one
        hold = attempt.cost_usd if decision.verdict is Verdict.RETRY else Decimal(0)
        try:
            job = record(
                self.engine,
                call,
                attempt,
                finish=JOB_FAILED if final else None,
                error_type=exc.kind,
                error=exc.detail,
                hold=hold,
            )
        except ClaimLost:  # another delivery owns the job: the call still cost money
            record_orphan(self.engine, attempt)
            raise
        if hold and job.status == JOB_FAILED:  # the budget could not hold it: no next attempt
            decision = Decision(verdict=Verdict.FAIL, reason=job.error_type or "")
            run.decided, final = (run.attempts_here, decision), True
        elif hold:
            run.reserved_usd += hold
        metrics.record_attempt(attempt, kind=call.spec.kind)
        bound.warning(
            "attempt.failed",
            model=call.spec.id,
            status=exc.status_code,
            error_type=exc.kind,
            final=final,
            retry_after_s=exc.retry_after_s,
            decision=decision.verdict.value,
            wait_s=round(decision.wait_s, 3),
        )

    def _succeeded(self, run: Run, call: Call, result, bound) -> None:
        self.health.record_success(call.spec.id)
        self.limiter.on_success(call.spec.id)
        self.limiter.settle(
            call.spec.id, estimated=run.tokens_estimate, used=result.usage.total_tokens
        )
        attempt = call.attempt(outcome=SUCCEEDED, usage=result.usage)
        if run.screen is not None:
            self.moderator.check_output(run, call, attempt, result)
        try:
            said = said_by(run) if run.conversation_id else None
            end = record_output(
                self.engine,
                call,
                attempt,
                result,
                JOB_SUCCEEDED,
                reserved=run.reserved_usd,
                said=said,
                webhook=run.webhook,
                ends=self.ends,
            )
        except ClaimLost:
            record_orphan(self.engine, attempt)
            raise
        metrics.record_attempt(attempt, kind=call.spec.kind)
        cancelled = end.status == CANCELLED
        bound.info(
            "job.cancelled" if cancelled else "job.succeeded",
            model=call.spec.id,
            cost_usd=money(end.cost_usd),
            attempts=end.attempts,
        )
        if cancelled:
            raise Cancelled("recorded with the call")

    def _cancel_requested(self, run: Run) -> bool:
        with session_scope(self.engine) as session:
            job = session.get(Job, run.job_id)
            if job is None or job.claim_token != run.token:
                raise ClaimLost(run.job_id)
            return job.cancel_requested

    def _end(self, run: Run, status: str, error_type: str, error: str) -> None:
        if not finish_owned(
            self.engine,
            job_id=run.job_id,
            token=run.token,
            status=status,
            error_type=error_type,
            error=error,
        ):
            log.warning("job.claim_lost", job_id=run.job_id)

    def _reschedule(self, run: Run, delay_s: float, bound) -> str:
        """Hand the job back to the queue, to be picked up again after `delay_s`."""
        publishing = self.publish is not None
        with session_scope(self.engine) as session:
            released = release(session, job_id=run.job_id, token=run.token, publishing=publishing)
        if released and publishing:
            try:
                self.publish(run.job_id, run.kind, delay_s, run.batch_id is not None)
            except Exception:  # the broker is down: the sweeper publishes it once it is back
                with session_scope(self.engine) as session:
                    unpublish(session, job_id=run.job_id)
                raise
        bound.info("job.rescheduled", delay_s=round(delay_s, 2), released=released)
        return "rescheduled"
