"""worker/retry.py: which failures are retried, how long to wait, and the tenacity wiring."""

from __future__ import annotations

import math

import pytest
from tenacity import RetryCallState, Retrying

from models.errors import PermanentProviderError, ProviderError, RetryableProviderError
from models.settings import Settings
from worker.retry import (
    RETRYABLE_STATUSES,
    RetryCounts,
    RetryPolicy,
    Verdict,
    is_retryable_status,
)


def state_after(exc: BaseException | None, attempt: int) -> RetryCallState:
    """The tenacity state after `attempt` attempts, the last one failing with `exc`."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if exc is not None:
        state.set_exception((type(exc), exc, None))
    return state


def failing(*outcomes):
    """A call that raises each exception in turn and returns any non-exception outcome."""
    calls = []

    def call():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, calls


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (422, False),
        (501, False),
        (200, False),
    ],
)
def test_is_retryable_status(status, retryable):
    assert is_retryable_status(status) is retryable


def test_retryable_statuses_are_exactly_the_documented_ones():
    assert frozenset({429, 500, 502, 503, 504}) == RETRYABLE_STATUSES


# -- wait_s -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "cap", "expected"),
    [(3.0, 60.0, 3.0), (0.0, 60.0, 0.0), (60.0, 60.0, 60.0), (500.0, 60.0, 60.0), (7.5, 5.0, 5.0)],
)
def test_wait_honours_retry_after_up_to_the_cap(retry_after, cap, expected):
    # Given a provider error that says when to come back
    policy = RetryPolicy(initial_s=0.5, max_s=2.0, retry_after_cap_s=cap)
    error = RetryableProviderError("slow down", status_code=429, retry_after_s=retry_after)
    # When the policy computes the wait (on any attempt)
    for attempt in (1, 3):
        # Then Retry-After wins over backoff, capped
        assert policy.wait_s(state_after(error, attempt)) == expected


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 8])
def test_wait_without_retry_after_is_full_jitter_within_the_window(attempt):
    # Given an error without Retry-After on attempt n
    policy = RetryPolicy(initial_s=0.5, max_s=20.0)
    state = state_after(RetryableProviderError("boom", status_code=503), attempt)
    # When the wait is drawn many times
    waits = [policy.wait_s(state) for _ in range(300)]
    # Then every wait lies in [0, min(max, initial * 2^(n-1))] and the whole window is used
    bound = min(20.0, 0.5 * 2 ** (attempt - 1))
    assert all(0 <= w <= bound for w in waits)
    assert max(waits) > 0.8 * bound
    assert min(waits) < 0.2 * bound


@pytest.mark.parametrize("retry_after", [-1.0, math.nan])
def test_wait_is_never_negative_or_nan(retry_after):
    policy = RetryPolicy(retry_after_cap_s=60.0)
    error = RetryableProviderError("slow down", status_code=429, retry_after_s=retry_after)
    assert 0 <= policy.wait_s(state_after(error, 1)) <= 60.0


def test_from_settings():
    settings = Settings(
        _env_file=None, max_attempts=7, retry_initial_s=0.1, retry_max_s=3, retry_after_cap_s=9
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(
        max_attempts=7, initial_s=0.1, max_s=3.0, retry_after_cap_s=9.0
    )


# -- tenacity wiring --------------------------------------------------------------------------


def retrying(policy: RetryPolicy, sleeps: list[float]) -> Retrying:
    return Retrying(sleep=sleeps.append, **policy.tenacity_kwargs())


@pytest.mark.parametrize("max_attempts", [1, 3, 4])
def test_retryable_error_is_retried_up_to_max_attempts_then_reraised(max_attempts):
    # Given a call that always fails with a retryable error
    policy = RetryPolicy(max_attempts=max_attempts, initial_s=0.01, max_s=0.05)
    errors = [RetryableProviderError(f"503 #{i}", status_code=503) for i in range(max_attempts)]
    call, calls = failing(*errors)
    sleeps: list[float] = []
    # When tenacity runs it
    with pytest.raises(RetryableProviderError) as info:
        retrying(policy, sleeps)(call)
    # Then it tried max_attempts times, slept between them, and re-raised the last error itself
    assert len(calls) == max_attempts
    assert len(sleeps) == max_attempts - 1
    assert all(0 <= s <= 0.05 for s in sleeps)
    assert info.value is errors[-1]


@pytest.mark.parametrize(
    "error",
    [
        PermanentProviderError("bad request", status_code=400),
        PermanentProviderError("no such model", status_code=404),
        ProviderError("unknown provider failure"),
        ValueError("a bug, not a provider failure"),
    ],
)
def test_non_retryable_errors_fail_at_once(error):
    call, calls = failing(error, "unreachable")
    sleeps: list[float] = []
    with pytest.raises(type(error)) as info:
        retrying(RetryPolicy(max_attempts=4), sleeps)(call)
    assert info.value is error
    assert len(calls) == 1
    assert sleeps == []


def test_retry_after_then_success():
    # Given a 429 with Retry-After 2.5 s, a 503 with 30 s (above the 10 s cap), then success
    call, calls = failing(
        RetryableProviderError("rate limited", status_code=429, retry_after_s=2.5),
        RetryableProviderError("unavailable", status_code=503, retry_after_s=30),
        "done",
    )
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=4, retry_after_cap_s=10)
    # When tenacity runs it
    result = retrying(policy, sleeps)(call)
    # Then it slept exactly as told (capped) and returned the third outcome
    assert result == "done"
    assert len(calls) == 3
    assert sleeps == [2.5, 10.0]


def test_permanent_after_retryable_stops():
    call, calls = failing(
        RetryableProviderError("rate limited", status_code=429, retry_after_s=0),
        PermanentProviderError("bad request", status_code=400),
        "unreachable",
    )
    with pytest.raises(PermanentProviderError):
        retrying(RetryPolicy(max_attempts=5), [])(call)
    assert len(calls) == 2


# -- decide: the whole policy as a table ------------------------------------------------------

TABLE_POLICY = RetryPolicy(max_attempts=4, initial_s=0.5, max_s=20.0, retry_after_cap_s=60.0)


def limited(retry_after: float | None = 2.0) -> RetryableProviderError:
    return RetryableProviderError(
        "slow down", status_code=429, retry_after_s=retry_after, kind="rate_limited"
    )


UNAVAILABLE = RetryableProviderError("unavailable", status_code=503)
RETRY, FAIL, TIMEOUT = Verdict.RETRY, Verdict.FAIL, Verdict.TIMEOUT


@pytest.mark.parametrize(
    ("error", "transient", "rate_limited", "seconds_left", "verdict", "wait"),
    [
        # rate-limited: the deadline bounds it, not the attempt count
        (limited(2.0), 0, 1, 100.0, RETRY, 2.0),
        (limited(2.0), 3, 40, 100.0, RETRY, 2.0),
        (limited(2.0), 0, 7, 2.0, TIMEOUT, 2.0),  # the wait would reach the deadline
        (limited(2.0), 0, 7, 1.5, TIMEOUT, 2.0),
        (limited(120.0), 0, 1, 1000.0, RETRY, 60.0),  # Retry-After capped
        (limited(120.0), 0, 1, 30.0, TIMEOUT, 60.0),
        (limited(None), 0, 3, 100.0, RETRY, 2.0),  # backoff on the 429 count: 0.5 * 2^2
        (limited(None), 0, 9, 100.0, RETRY, 20.0),  # …up to max_s
        (limited(None), 0, 5000, 100.0, RETRY, 20.0),  # …without overflowing
        (RetryableProviderError("busy", kind="rate_limited"), 0, 9, 100.0, RETRY, 20.0),
        # no deadline: every retryable failure counts against max_attempts
        (limited(2.0), 0, 3, None, RETRY, 2.0),
        (limited(2.0), 1, 3, None, FAIL, 0.0),
        (limited(2.0), 0, 4, None, FAIL, 0.0),
        # other transient failures: bounded by max_attempts (this failure counted), and the deadline
        (UNAVAILABLE, 1, 0, 100.0, RETRY, 0.5),
        (UNAVAILABLE, 3, 50, 100.0, RETRY, 2.0),  # 429s before do not use up attempts
        (UNAVAILABLE, 4, 0, 100.0, FAIL, 0.0),
        (UNAVAILABLE, 4, 0, None, FAIL, 0.0),
        (UNAVAILABLE, 2, 0, 0.5, TIMEOUT, 1.0),
        (RetryableProviderError("x", status_code=503, retry_after_s=7), 1, 0, 100.0, RETRY, 7.0),
        (RetryableProviderError("timed out", kind="timeout"), 2, 0, 100.0, RETRY, 1.0),
        # not retryable: fails at once, whatever is left
        (PermanentProviderError("bad request", status_code=400), 0, 0, 100.0, FAIL, 0.0),
        (
            PermanentProviderError("quota", status_code=429, kind="insufficient_quota"),
            0,
            0,
            100.0,
            FAIL,
            0.0,
        ),
        (ProviderError("unknown"), 0, 0, 100.0, FAIL, 0.0),
        (ValueError("a bug"), 0, 0, 100.0, FAIL, 0.0),
    ],
)
def test_decide(error, transient, rate_limited, seconds_left, verdict, wait):
    counts = RetryCounts(transient=transient, rate_limited=rate_limited)
    decision = TABLE_POLICY.decide(
        error, counts, seconds_left=seconds_left, jitter=lambda _low, high: high
    )
    assert (decision.verdict, decision.wait_s) == (verdict, wait), decision.reason


def test_backoff_jitter_is_drawn_over_the_whole_window():
    windows: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        windows.append((low, high))
        return low

    decision = TABLE_POLICY.decide(
        UNAVAILABLE, RetryCounts(transient=3), seconds_left=100.0, jitter=jitter
    )
    assert windows == [(0.0, 2.0)] and decision.wait_s == 0.0


@pytest.mark.parametrize(
    ("errors", "transient", "rate_limited"),
    [
        ([limited(), limited(None), RetryableProviderError("b", kind="rate_limited")], 0, 3),
        ([UNAVAILABLE, RetryableProviderError("t", kind="timeout"), limited()], 2, 1),
        ([PermanentProviderError("no", status_code=400), ValueError("bug")], 0, 0),
    ],
)
def test_counts_note_rate_limits_apart_from_other_failures(errors, transient, rate_limited):
    counts = RetryCounts()
    for error in errors:
        counts.note(error)
    assert (counts.transient, counts.rate_limited) == (transient, rate_limited)


def test_counts_from_stored_attempts():
    stored = [
        (429, "rate_limited"),
        (503, "provider_error"),
        (None, "timeout"),
        (None, "rate_limited"),
    ]
    assert RetryCounts.from_attempts(stored) == RetryCounts(transient=2, rate_limited=2)
