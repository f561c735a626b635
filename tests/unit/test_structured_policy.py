"""Structured requests and the cost policy: capabilities, token estimates, the 422s (tables)."""

from __future__ import annotations

import pytest

from models.catalogue import Catalogue, ModelSpec, load_catalogue
from models.errors import InvalidRequest
from models.planning import Defaults, plan_job
from models.schemas import JobCreate
from models.tokens import count_messages, count_request, count_response_format, count_tools

TAGS = {"type": "array", "items": {"type": "string"}}
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "tags": TAGS},
    "required": ["title", "tags"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "page", "schema": SCHEMA}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}


def spec(model_id: str, tier: str, capabilities: list[str], price: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        kind="text",
        tier=tier,
        capabilities=frozenset(capabilities),
        context_window=100_000,
        max_output_tokens=4096,
        input_per_1m=price,
        output_per_1m=price,
    )


#: the cheapest model can do neither; the next only tools; the dearest both
SMALL = Catalogue(
    {
        s.id: s
        for s in (
            spec("bare", "economy", [], "0.1"),
            spec("tooled", "economy", ["tools"], "0.2"),
            spec("full", "economy", ["tools", "json_schema"], "0.3"),
        )
    }
)


def plan(params: dict, model: str | None = None, catalogue: Catalogue = SMALL):
    body = {"kind": "text", "prompt": "a product page", "params": params, "model": model}
    return plan_job(JobCreate.model_validate(body), catalogue, Defaults(tier="economy"))


@pytest.mark.parametrize(
    ("params", "chosen", "rejected"),
    [
        ({}, "bare", {}),
        ({"response_format": {"type": "json_object"}}, "bare", {}),
        ({"response_format": {"type": "text"}}, "bare", {}),
        ({"tools": [TOOL]}, "tooled", {"bare": "no tools"}),
        (
            {"response_format": JSON_SCHEMA},
            "full",
            {"bare": "no json_schema", "tooled": "no json_schema"},
        ),
        (
            {"response_format": JSON_SCHEMA, "tools": [TOOL]},
            "full",
            {"bare": "no json_schema, no tools", "tooled": "no json_schema"},
        ),
    ],
)
def test_policy_picks_only_models_that_cover_the_request(params, chosen, rejected):
    routing = plan(params).routing.record()
    assert routing["chosen"] == chosen
    reasons = {c["model"]: c.get("rejected") for c in routing["candidates"]}
    for model, reason in rejected.items():
        assert reasons[model] == reason
    assert chosen not in routing["fallbacks"]
    assert not set(rejected) & set(routing["fallbacks"])


@pytest.mark.parametrize(
    ("params", "model", "needle", "loc"),
    [
        (
            {"response_format": JSON_SCHEMA},
            "tooled",
            "model 'tooled' has no json_schema",
            "response_format",
        ),
        ({"tools": [TOOL]}, "bare", "model 'bare' has no tools", "tools"),
    ],
)
def test_explicit_model_without_the_capability_is_refused(params, model, needle, loc):
    with pytest.raises(InvalidRequest) as info:
        plan(params, model=model)
    assert needle in info.value.detail
    assert info.value.errors[0]["loc"] == ["body", "params", loc]


def test_no_model_with_the_capability_is_refused():
    only_bare = Catalogue({"bare": SMALL.get("bare")})
    with pytest.raises(InvalidRequest, match="capabilities"):
        plan({"tools": [TOOL]}, catalogue=only_bare)


# -- token estimates ---------------------------------------------------------------------------

#: OpenAI cookbook "How to count tokens with tiktoken": the API bills this request 101 prompt
#: tokens on gpt-4o and gpt-4o-mini
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


def test_function_definitions_are_counted_as_openai_bills_them():
    assert count_request(COOKBOOK_MESSAGES, {"tools": COOKBOOK_TOOLS}) == 101


def test_plain_requests_count_only_their_messages():
    assert count_request(COOKBOOK_MESSAGES, {"max_tokens": 5}) == count_messages(COOKBOOK_MESSAGES)


def test_the_schema_and_tool_calls_add_prompt_tokens():
    assert count_response_format(JSON_SCHEMA) > len(str(SCHEMA)) // 8
    assert count_response_format({"type": "json_object"}) == 0
    call = {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": '{"a": 1}'}}
    with_call = [*COOKBOOK_MESSAGES, {"role": "assistant", "tool_calls": [call]}]
    assert count_messages(with_call) > count_messages(COOKBOOK_MESSAGES) + 3


def test_estimates_and_worst_case_include_tools_and_schema():
    catalogue = load_catalogue()
    body = {"kind": "text", "prompt": "a page", "model": "gpt-4o-mini"}
    plain = plan_job(JobCreate.model_validate(body), catalogue, Defaults())
    params = {"response_format": JSON_SCHEMA, "tools": COOKBOOK_TOOLS}
    rich = plan_job(JobCreate.model_validate({**body, "params": params}), catalogue, Defaults())
    extra = count_tools(COOKBOOK_TOOLS) + count_response_format(JSON_SCHEMA)
    assert rich.prompt_tokens == plain.prompt_tokens + extra
    assert rich.estimated_cost_usd > plain.estimated_cost_usd


def test_params_are_stored_as_sent_with_the_schema_key():
    strict = {**JSON_SCHEMA, "json_schema": {**JSON_SCHEMA["json_schema"], "strict": True}}
    planned = plan({"response_format": strict, "stop": "END", "seed": 7})
    assert planned.params["response_format"]["json_schema"]["schema"] == SCHEMA
    assert planned.params["stop"] == "END" and planned.params["seed"] == 7
