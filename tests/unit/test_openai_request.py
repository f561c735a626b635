"""A text call's HTTP request: what the SDK's `post()` would send, built from shared options."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from models.errors import RetryableProviderError
from models.schemas import TextParams
from worker.providers.openai_provider import _CHAT_OPTIONS, OpenAIProvider

ANSWER = {
    "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def provider_seeing(requests: list[httpx2.Request], status: int = 200) -> OpenAIProvider:
    """A provider whose default client answers from memory, keeping each request it sent."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return httpx2.Response(status, json=ANSWER if status == 200 else {"error": {}})

    sdk = OpenAIProvider(api_key="sk-test-key-123456", base_url="http://llm.test/v1", timeout_s=5)
    sdk.default = openai.OpenAI(
        api_key="sk-test-key-123456",
        base_url="http://llm.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    return sdk


def test_each_call_sends_its_own_body_with_the_sdks_auth_and_headers():
    requests: list[httpx2.Request] = []
    sdk = provider_seeing(requests)
    shared = _CHAT_OPTIONS.model_dump()  # every field, nested dicts included, before any call
    for word in ("one", "two"):
        result = sdk.generate_text(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": word}],
            params=TextParams(max_tokens=5),
        )
        assert result.text == "hi" and result.usage.prompt_tokens == 3
    first = requests[0]
    assert [json.loads(r.content)["messages"][0]["content"] for r in requests] == ["one", "two"]
    assert json.loads(first.content)["max_tokens"] == 5
    for request in requests:
        assert request.method == "POST"
        assert str(request.url) == "http://llm.test/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-test-key-123456"
        assert request.headers["content-type"] == "application/json"
        assert "x-stainless-retry-count" in request.headers  # the SDK's own headers
    # the shared options are copied, never written: no body or idempotency key stays on them
    assert _CHAT_OPTIONS.json_data is None and _CHAT_OPTIONS.idempotency_key is None
    assert _CHAT_OPTIONS.model_dump() == shared  # nor its headers, params or security


def test_an_error_status_maps_onto_the_retry_split_once():
    requests: list[httpx2.Request] = []
    with pytest.raises(RetryableProviderError) as raised:
        provider_seeing(requests, status=503).generate_text(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], params=TextParams()
        )
    assert raised.value.status_code == 503 and len(requests) == 1  # retries stay tenacity's
