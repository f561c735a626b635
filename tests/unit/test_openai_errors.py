"""worker/providers/openai_provider.py: SDK exceptions mapped to genq's retry split, redacted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx2  # the HTTP client the openai SDK is built on here (openai._base_client imports it)
import openai
import pytest

from models.errors import PermanentProviderError, ProviderError, RetryableProviderError
from worker.providers.openai_provider import _retry_after, translate_error

SECRET = "sk-abcdef123456789"
URL = "https://api.openai.com/v1/chat/completions"


def request() -> httpx2.Request:
    return httpx2.Request("POST", URL)


def status_error(status: int, headers: dict[str, str] | None = None, message: str | None = None):
    """The SDK exception the client raises for this HTTP status."""
    classes = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        404: openai.NotFoundError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    cls = classes.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    response = httpx2.Response(status, headers=headers or {}, request=request())
    return cls(message or f"Error code: {status}", response=response, body=None)


def test_sdk_uses_httpx2():
    # If the SDK switches HTTP client, the hand-built responses below must follow it
    assert openai._base_client.httpx2 is httpx2


@pytest.mark.parametrize(
    ("status", "headers", "cls", "kind", "retry_after"),
    [
        (429, {"retry-after-ms": "1500"}, RetryableProviderError, "rate_limited", 1.5),
        (
            429,
            {"retry-after-ms": "250", "retry-after": "9"},
            RetryableProviderError,
            "rate_limited",
            0.25,
        ),
        (
            429,
            {"retry-after-ms": "soon", "retry-after": "3"},
            RetryableProviderError,
            "rate_limited",
            3.0,
        ),
        (429, {}, RetryableProviderError, "rate_limited", None),
        (500, {}, RetryableProviderError, "provider_error", None),
        (502, {}, RetryableProviderError, "provider_error", None),
        (503, {"retry-after-ms": "2000"}, RetryableProviderError, "provider_error", 2.0),
        (504, {}, RetryableProviderError, "provider_error", None),
        (400, {}, PermanentProviderError, "provider_error", None),
        (401, {}, PermanentProviderError, "provider_error", None),
        (404, {}, PermanentProviderError, "provider_error", None),
        (422, {}, PermanentProviderError, "provider_error", None),
    ],
)
def test_status_errors(status, headers, cls, kind, retry_after):
    # Given the SDK's exception for an HTTP error
    exc = status_error(status, headers)
    # When translated
    error = translate_error(exc)
    # Then the class decides retrying, and status, kind and Retry-After are carried over
    assert type(error) is cls
    assert error.status_code == status
    assert error.kind == kind
    assert error.retry_after_s == retry_after
    assert f"Error code: {status}" in error.detail


@pytest.mark.parametrize(("status", "seconds"), [(429, "2"), (503, "7")])
def test_plain_retry_after_header_is_honoured(status, seconds):
    error = translate_error(status_error(status, {"retry-after": seconds}))
    assert error.retry_after_s == float(seconds)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ({}, None),
        ({"retry-after-ms": "1"}, 0.001),
        ({"retry-after-ms": "abc", "retry-after": "4.5"}, 4.5),
        ({"retry-after-ms": "abc"}, None),
        ({"x-request-id": "req_1"}, None),
    ],
)
def test_retry_after_headers(headers, expected):
    value = _retry_after(None if headers is None else httpx2.Headers(headers))
    assert value == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "3"}, 3.0), ({"Retry-After": "120"}, 120.0)],
)
def test_retry_after_seconds_header(headers, expected):
    assert _retry_after(httpx2.Headers(headers)) == expected


def test_http_date_retry_after_is_read_as_a_moment():
    # A date in the past means "now"; a date 30 s ahead means about 30 s
    past = httpx2.Headers({"retry-after-ms": "x", "retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert _retry_after(past) == 0.0
    ahead = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= _retry_after(httpx2.Headers({"retry-after": ahead})) <= 30


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf"])
def test_unusable_retry_after_is_ignored_or_clamped(value):
    seconds = _retry_after(httpx2.Headers({"retry-after": value}))
    assert seconds is None or seconds == 0.0


def test_timeout_is_retryable():
    error = translate_error(openai.APITimeoutError(request=request()))
    assert type(error) is RetryableProviderError
    assert (error.kind, error.status_code, error.retry_after_s) == ("timeout", None, None)


def test_connection_error_is_retryable():
    error = translate_error(openai.APIConnectionError(request=request()))
    assert type(error) is RetryableProviderError
    assert error.kind == "connection_error"
    assert error.status_code is None
    assert "Connection error." in error.detail


def test_other_sdk_errors_are_permanent():
    error = translate_error(openai.OpenAIError("something odd"))
    assert type(error) is PermanentProviderError
    assert isinstance(error, ProviderError)
    assert error.detail == "something odd"


@pytest.mark.parametrize(
    "exc",
    [
        status_error(401, message=f"Incorrect API key provided: {SECRET}. Find your key at ..."),
        status_error(429, message=f"Rate limit reached for key {SECRET}"),
        status_error(500, message=f"upstream said {SECRET}!"),
        openai.APIConnectionError(message=f"proxy refused key {SECRET}", request=request()),
        openai.OpenAIError(f"odd failure with {SECRET}"),
    ],
    ids=["401", "429", "500", "connection", "other"],
)
def test_secrets_are_redacted(exc):
    # Given an SDK error whose message contains an API key
    assert SECRET in str(exc)
    # When translated
    error = translate_error(exc)
    # Then neither the detail nor str() contains the key, only its masked prefix
    for text in (error.detail, str(error)):
        assert SECRET not in text
        assert "123456789" not in text
        assert "sk-ab***" in text


def test_a_429_for_an_exhausted_quota_is_permanent_not_rate_limited():
    # Given OpenAI's 429 that means "no quota left" (retrying until the deadline cannot help)
    response = httpx2.Response(429, request=request())
    body = {"message": "You exceeded your current quota", "type": "insufficient_quota"}
    exc = openai.RateLimitError(
        "Error code: 429", response=response, body={**body, "code": "insufficient_quota"}
    )
    # When translated, then the job fails at once with a kind that says why
    error = translate_error(exc)
    assert type(error) is PermanentProviderError
    assert (error.status_code, error.kind) == (429, "insufficient_quota")
