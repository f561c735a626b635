"""Retry policy as data: which failures are retried and how long to wait, handed to tenacity."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from models.errors import ProviderError
from models.settings import Settings

#: HTTP statuses worth another attempt; every other 4xx fails the job at once
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


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

    def wait_s(self, state: RetryCallState) -> float:
        """Seconds before the next attempt."""
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after_s if isinstance(exc, ProviderError) else None
        if hint is not None and math.isfinite(hint):
            return min(max(hint, 0.0), self.retry_after_cap_s)
        return wait_random_exponential(multiplier=self.initial_s, max=self.max_s)(state)

    def tenacity_kwargs(self) -> dict:
        """Arguments for `tenacity.Retrying`: tenacity alone owns retrying a provider call."""
        return {
            "stop": stop_after_attempt(self.max_attempts),
            "wait": self.wait_s,
            "retry": retry_if_exception(_retryable),
            "reraise": True,
        }
