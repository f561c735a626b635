"""The moderation step of a run: the input before the first generation call, a text output after
its call (README "Moderation").

Only jobs whose stored policy says `flag` or `block` get here (`screen_of` is None otherwise, so
a job with moderation off makes no call and no query). Each check is one `moderate` call over
the texts, retried as model calls are (the same RetryPolicy: 429s bounded by the job's deadline,
other transient failures by the attempt count, Retry-After honoured) and sent through the same
rate limiter, under the moderation model's name. When a check keeps failing, the outage rule
decides (`GENQ_MODERATION_ON_ERROR`): `fail` ends the job `moderation_unavailable`, `allow`
goes on with a verdict that records the error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine

from models.attempts import FAILED, RETRYABLE, Attempt, add_attempt
from models.db import session_scope, utcnow
from models.errors import ProviderError
from models.jobs import CANCELLED, RUNNING, Job, finish_job, owned_job
from models.jobs import FAILED as JOB_FAILED
from models.logging import redact
from models.moderation import (
    BLOCKED,
    UNAVAILABLE,
    Mode,
    OnError,
    Verdict,
    input_texts,
    on_error_for,
    output_texts,
    unavailable,
)
from models.schemas import JobCreate
from models.settings import Settings
from worker import metrics
from worker.providers.base import Provider, TextResult
from worker.ratelimit import Limiter
from worker.recording import Call, ClaimLost, finish_owned, owned, record, record_orphan
from worker.retry import Reschedule, RetryCounts, RetryPolicy
from worker.retry import Verdict as Retry

if TYPE_CHECKING:
    from worker.run import Run
    from worker.runner import Runner

log = structlog.get_logger("genq.worker")


@dataclass(frozen=True, kw_only=True)
class ModerationConfig:
    """The deployment's moderation settings the worker needs."""

    model: str = "omni-moderation-latest"
    #: None: `fail` for block, `allow` for flag
    on_error: OnError | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModerationConfig:
        return cls(model=settings.moderation_model, on_error=settings.moderation_on_error)


@dataclass(kw_only=True)
class Screen:
    """One job's moderation: its mode, its outage rule and the verdicts stored so far."""

    mode: Mode
    on_error: OnError
    verdicts: dict = field(default_factory=dict)


def screen_of(request: JobCreate, stored: dict | None, config: ModerationConfig) -> Screen | None:
    """The job's moderation, or None when its stored policy says off (or says nothing)."""
    mode = request.policy.moderation
    if mode is None or mode == "off":
        return None
    return Screen(mode=mode, on_error=on_error_for(mode, config.on_error), verdicts=stored or {})


class ModerationEnded(Exception):
    """The moderation step ended the job (blocked, unavailable, deadline); `result` is what
    the run returns."""

    def __init__(self, result: str):
        super().__init__(result)
        self.result = result


@dataclass(frozen=True, kw_only=True)
class _Failed:
    """A check that could not be made: why, and whether it was the job's deadline."""

    reason: str
    timeout: bool = False

    def error(self) -> tuple[str, str]:
        if self.timeout:
            return "timeout", "the job's deadline passed while moderation was retried"
        return UNAVAILABLE, f"moderation unavailable: {self.reason}"


#: built once (see DEVELOPERS.md "Hot path"): store the verdicts of a job this run owns
_JOBS = Job.__table__.c
_STORE = (
    update(Job.__table__)
    .where(
        _JOBS.id == bindparam("job_id"),
        _JOBS.status == RUNNING,
        _JOBS.claim_token == bindparam("token"),
    )
    .values(moderation=bindparam("moderation"))
    .returning(_JOBS.cancel_requested)
)


@dataclass(kw_only=True)
class Moderator:
    """Runs a job's checks with the Runner's provider, limiter, retry policy and clock."""

    engine: Engine
    provider: Provider
    limiter: Limiter
    retry: RetryPolicy
    sleep: Callable[[float], None]
    #: the Runner's rule for a wait before a retry: the seconds to sleep, or Reschedule
    hold: Callable[[float], float] = float
    config: ModerationConfig = field(default_factory=ModerationConfig)

    @classmethod
    def of(cls, runner: Runner) -> Moderator:
        """The moderator of a Runner: its provider, limiter, retry policy and clock."""
        return cls(
            engine=runner.engine,
            provider=runner.provider,
            limiter=runner.limiter,
            retry=runner.retry,
            sleep=runner.sleep,
            hold=runner.hold,
            config=runner.moderation,
        )

    def check_input(self, run: Run) -> None:
        """Check the input once per job (a job given back to the queue keeps its verdict);
        raises ModerationEnded when the job must not be generated."""
        screen, request = run.screen, run.request
        if "input" in screen.verdicts:
            return
        texts = input_texts(request.chat_messages()) if request.kind == "text" else [request.prompt]
        outcome = self.check(texts, deadline_at=run.deadline_at, job_id=run.job_id)
        ended = self._ends(screen, "input", outcome)
        if ended is None:
            if self._store(run.job_id, run.token, screen.verdicts):  # cancelled meanwhile
                finish_owned(
                    self.engine,
                    job_id=run.job_id,
                    token=run.token,
                    status=CANCELLED,
                    error_type="cancelled",
                    error="cancelled while running",
                )
                raise ModerationEnded("cancelled")
            return
        error_type, message = ended
        with session_scope(self.engine) as session:
            job = owned_job(session, job_id=run.job_id, token=run.token)
            if job is None:
                raise ClaimLost(run.job_id)
            job.moderation = dict(screen.verdicts)
            finish_job(session, job=job, status=JOB_FAILED, error_type=error_type, error=message)
        metrics.record_job_end(kind=request.kind, model=run.spec.id, status=JOB_FAILED)
        raise ModerationEnded("failed")

    def check_output(self, run: Run, call: Call, attempt: Attempt, result: object) -> None:
        """Check a text answer before it is stored. When it must be withheld, the call's
        attempt (and its cost) is recorded, the job fails without output, and ModerationEnded
        is raised; an image answer is not checked."""
        if not isinstance(result, TextResult):
            return
        screen = run.screen
        texts = output_texts(result.text, result.tool_calls)
        try:
            outcome = self.check(texts, deadline_at=run.deadline_at, job_id=call.job_id)
        except Reschedule:
            self._discard(call, attempt)
            raise
        ended = self._ends(screen, "output", outcome)
        if ended is None:
            try:
                self._store(call.job_id, call.token, screen.verdicts)  # a cancel: record_output
            except ClaimLost:
                record_orphan(self.engine, attempt)
                raise
            return
        error_type, message = ended
        attempt.outcome, attempt.error_type, attempt.error = FAILED, error_type, message
        try:
            _withhold(self.engine, call, attempt, screen.verdicts, error_type, message)
        except ClaimLost:
            record_orphan(self.engine, attempt)
            raise
        metrics.record_attempt(attempt, kind=call.spec.kind)
        metrics.record_job_end(kind=call.spec.kind, model=call.spec.id, status=JOB_FAILED)
        raise ModerationEnded("failed")

    def _ends(self, screen: Screen, stage: str, outcome: Verdict | _Failed) -> tuple | None:
        """Note the stage's verdict; the (error type, message) that ends the job, if any."""
        model = self.config.model
        if isinstance(outcome, _Failed):
            if outcome.timeout or screen.on_error == "fail":
                screen.verdicts[stage] = unavailable(model, outcome.reason).record()
                metrics.record_moderation(stage, "unavailable")
                return outcome.error()
            outcome = unavailable(model, outcome.reason)  # allowed: go on, saying so
        screen.verdicts[stage] = outcome.record()
        blocked = outcome.flagged and screen.mode == "block"
        result = "blocked" if blocked else "flagged" if outcome.flagged else "passed"
        metrics.record_moderation(stage, "error" if outcome.error else result)
        log.info("moderation.checked", stage=stage, result=result, categories=outcome.categories)
        if blocked:
            flagged = ", ".join(outcome.categories) or "flagged"
            return BLOCKED, f"the {stage} was flagged by moderation ({flagged})"
        return None

    def check(
        self, texts: list[str], *, deadline_at: datetime | None, job_id: str
    ) -> Verdict | _Failed:
        """One verdict over `texts`, retried as a model call is; _Failed once it gives up."""
        model = self.config.model
        if not texts:
            return Verdict(flagged=False, model=model)
        counts = RetryCounts()
        while True:
            self.limiter.acquire(model, 0)
            try:
                verdict = self.provider.moderate(model=model, texts=texts)
            except ProviderError as exc:
                wait = self._retry_wait(exc, counts, deadline_at, job_id)
                if isinstance(wait, _Failed):
                    return wait
                self.sleep(self.hold(wait))  # or give the job back to the queue (Reschedule)
                continue
            except Exception as exc:  # a bug or an unexpected answer: the check failed
                return _Failed(reason=redact(f"{type(exc).__name__}: {exc}"))
            self.limiter.on_success(model)
            return verdict

    def _retry_wait(
        self, exc: ProviderError, counts: RetryCounts, deadline_at: datetime | None, job_id: str
    ) -> float | _Failed:
        """Seconds before the next try, or _Failed when the retry policy gives up."""
        if exc.status_code == 429:
            self.limiter.on_rate_limited(self.config.model)
        counts.note(exc)
        left = (deadline_at - utcnow()).total_seconds() if deadline_at else None
        decision = self.retry.decide(exc, counts, seconds_left=left)
        log.warning(
            "moderation.failed",
            job_id=job_id,
            status=exc.status_code,
            error_type=exc.kind,
            decision=decision.verdict.value,
        )
        if decision.verdict is Retry.RETRY:
            return decision.wait_s
        detail = f"{exc.kind} (HTTP {exc.status_code})" if exc.status_code else exc.kind
        return _Failed(reason=detail, timeout=decision.verdict is Retry.TIMEOUT)

    def _discard(self, call: Call, attempt: Attempt) -> None:
        """The answer's check is retried later: its call is recorded (billed) as a retryable
        attempt and the answer dropped; the job generates again when it runs again, so the
        call's cost is held again against the key's budget, or the job ends here when the
        budget cannot hold it (ModerationEnded)."""
        attempt.outcome, attempt.error_type = RETRYABLE, UNAVAILABLE
        attempt.error = "moderation of the answer was retried later; the answer was dropped"
        try:
            job = record(self.engine, call, attempt, hold=attempt.cost_usd)
        except ClaimLost:
            record_orphan(self.engine, attempt)
            raise
        metrics.record_attempt(attempt, kind=call.spec.kind)
        if job.status == JOB_FAILED:  # the budget cannot hold another generation
            raise ModerationEnded("failed")

    def _store(self, job_id: str, token: str, verdicts: dict) -> bool:
        """Store the verdicts on the job this run owns; whether a cancel was requested."""
        with session_scope(self.engine) as session:
            row = session.execute(
                _STORE, {"job_id": job_id, "token": token, "moderation": verdicts}
            ).first()
        if row is None:
            raise ClaimLost(job_id)
        return row.cancel_requested


def _withhold(
    engine: Engine, call: Call, attempt: Attempt, verdicts: dict, error_type: str, message: str
) -> None:
    """The call's attempt and cost, the verdicts, and the job's end without its output."""
    with session_scope(engine) as session:
        job = owned(session, call)
        job.provider, job.model = call.provider, call.spec.id
        add_attempt(session, job=job, attempt=attempt)
        job.moderation = dict(verdicts)
        finish_job(session, job=job, status=JOB_FAILED, error_type=error_type, error=message)
