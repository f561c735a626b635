"""Retry policy as data: which failures are retried, how long to wait, and what bounds them.

A rate-limited answer (429) is the provider's state, not the job's fault: it does not use up
the job's attempts. It waits (Retry-After honoured, capped; else backoff) and is bounded by the
job's deadline. Every other transient failure (5xx, timeouts, connection errors, …) counts
against `max_attempts`. `RetryPolicy.decide` is a pure function of the error, the job's counts
and the time left, so the whole policy is tested as a table; the Runner acts on its `Decision`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from tenacity import RetryCallState, retry_if_exception

from models.errors import ProviderError
from models.settings import Settings

#: HTTP statuses worth another attempt; every other 4xx fails the job at once
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: the error kind providers give a rate-limited answer
RATE_LIMITED = "rate_limited"

Jitter = Callable[[float, float], float]


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


def is_rate_limited(exc: BaseException) -> bool:
    """A retryable answer that says "too many requests" (429, or a provider's rate_limited)."""
    return _retryable(exc) and (exc.status_code == 429 or exc.kind == RATE_LIMITED)  # type: ignore[attr-defined]


class Reschedule(Exception):
    """Give the job back to the queue, to run again after `delay_s` (worker/runner.py)."""

    def __init__(self, delay_s: float):
        super().__init__(delay_s)
        self.delay_s = delay_s


class Verdict(StrEnum):
    RETRY = "retry"  #: wait `wait_s`, then call again
    FAIL = "fail"  #: the job fails with this error
    TIMEOUT = "timeout"  #: the wait would pass the job's deadline: it fails with `timeout`


@dataclass(frozen=True, kw_only=True)
class Decision:
    verdict: Verdict
    reason: str
    wait_s: float = 0.0


@dataclass(kw_only=True)
class RetryCounts:
    """A job's failed attempts so far, over all its runs: rate-limited ones and the others."""

    transient: int = 0
    rate_limited: int = 0

    def note(self, exc: BaseException) -> None:
        if is_rate_limited(exc):
            self.rate_limited += 1
        elif _retryable(exc):
            self.transient += 1

    @classmethod
    def from_attempts(cls, failed: Iterable[tuple[int | None, str | None]]) -> RetryCounts:
        """Counts from stored failed attempts' (http_status, error_type)."""
        counts = cls()
        for status, kind in failed:
            if status == 429 or kind == RATE_LIMITED:
                counts.rate_limited += 1
            else:
                counts.transient += 1
        return counts


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a provider's Retry-After wins, up to a cap."""

    max_attempts: int = 4
    initial_s: float = 0.5
    max_s: float = 20.0
    retry_after_cap_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            initial_s=settings.retry_initial_s,
            max_s=settings.retry_max_s,
            retry_after_cap_s=settings.retry_after_cap_s,
        )

    def decide(
        self,
        exc: BaseException,
        counts: RetryCounts,
        *,
        seconds_left: float | None,
        jitter: Jitter = random.uniform,
    ) -> Decision:
        """What to do after `exc`, given the job's failures so far (`exc` already counted) and
        the seconds left before its deadline (None: no deadline, so 429s count as attempts)."""
        if not _retryable(exc):
            return Decision(verdict=Verdict.FAIL, reason="not retryable")
        limited = is_rate_limited(exc)
        if limited and seconds_left is not None:
            nth = counts.rate_limited  # bounded by the deadline, below
        else:
            nth = counts.transient + (counts.rate_limited if limited else 0)
            if nth >= self.max_attempts:
                return Decision(
                    verdict=Verdict.FAIL, reason=f"{nth} of {self.max_attempts} attempts"
                )
        wait = self.wait_for(exc, nth, jitter=jitter)
        if seconds_left is not None and wait >= seconds_left:
            return Decision(verdict=Verdict.TIMEOUT, reason="deadline", wait_s=wait)
        return Decision(
            verdict=Verdict.RETRY, reason=RATE_LIMITED if limited else "transient", wait_s=wait
        )

    def wait_for(
        self, exc: BaseException | None, nth: int, *, jitter: Jitter = random.uniform
    ) -> float:
        """Seconds before the next attempt after the `nth` failure of its kind."""
        hint = exc.retry_after_s if isinstance(exc, ProviderError) else None
        if hint is not None and math.isfinite(hint):
            return min(max(hint, 0.0), self.retry_after_cap_s)
        window = min(self.max_s, self.initial_s * 2 ** min(max(nth - 1, 0), 62))
        return jitter(0.0, window)

    def wait_s(self, state: RetryCallState) -> float:
        """Seconds before the next attempt of a tenacity loop."""
        exc = state.outcome.exception() if state.outcome else None
        return self.wait_for(exc, state.attempt_number)

    def tenacity_kwargs(self) -> dict:
        """Arguments for `tenacity.Retrying` around a call with no deadline: every retryable
        failure, 429s included, counts against `max_attempts`."""
        tracker = _Tracker(policy=self)
        return {
            "retry": retry_if_exception(tracker.retry),
            "wait": tracker.wait,
            "reraise": True,
        }


@dataclass(kw_only=True)
class _Tracker:
    """One tenacity loop's counts, so its stop and waits follow `decide`."""

    policy: RetryPolicy
    counts: RetryCounts = field(default_factory=RetryCounts)
    last: Decision | None = None

    def retry(self, exc: BaseException) -> bool:
        self.counts.note(exc)
        self.last = self.policy.decide(exc, self.counts, seconds_left=None)
        return self.last.verdict is Verdict.RETRY

    def wait(self, _state: RetryCallState) -> float:
        return self.last.wait_s if self.last else 0.0
