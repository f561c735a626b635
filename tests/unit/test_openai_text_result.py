"""A chat completion's JSON read the way the SDK's unvalidated model read it."""

from __future__ import annotations

from worker.providers.openai_provider import text_result


def test_a_full_answer_gives_text_usage_and_reason():
    result = text_result(
        {
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        }
    )
    assert (result.text, result.finish_reason, result.tool_calls) == ("hi", "stop", None)
    assert (result.usage.prompt_tokens, result.usage.cached_tokens) == (7, 3)
    assert result.usage.completion_tokens == 2


def test_null_fields_read_as_none_and_tool_calls_keep_their_shape():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": None}}
    result = text_result(
        {
            "choices": [
                {"message": {"content": None, "tool_calls": [call]}, "finish_reason": None}
            ],
            "usage": None,
        }
    )
    assert result.text == ""
    assert result.finish_reason is None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (0, 0)
    assert result.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    ]
