"""The offline simulator's structured answers, and the worker's check of an answer (tables)."""

from __future__ import annotations

import json
import random
from collections import deque

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from models.pricing import Usage
from models.schemas import TextParams
from worker.output import InvalidOutput, checked
from worker.providers.base import TextResult
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import Simulator
from worker.providers.synth_json import instance_of

ASK = [{"role": "user", "content": "A product page for a kettle"}]
SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 4, "maxItems": 6},
    {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True},
    {"enum": ["red", "green"]},
    {"const": {"fixed": True}},
    {"type": "string", "minLength": 200},
    {"type": "string", "maxLength": 5},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "number", "maximum": -10},
    {"type": "integer", "minimum": 7, "maximum": 9, "multipleOf": 2},
    {"type": ["null", "boolean"]},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"type": "string", "format": "ipv4"},
    {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": ["b"]}]},
    {
        "type": "object",
        "properties": {"node": {"$ref": "#/$defs/node"}},
        "required": ["node"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "child": {"$ref": "#/$defs/node"}},
                "required": ["name"],
            }
        },
    },
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "bullets": {"type": "array", "items": {"type": "string"}, "minItems": 3},
            "seo": {"type": "object", "properties": {"slug": {"type": "string"}}},
        },
        "required": ["title", "bullets", "seo"],
        "additionalProperties": False,
    },
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instances_are_valid_under_their_schema(schema):
    value = instance_of(schema, random.Random(1))
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(value)


def test_instances_are_deterministic():
    schema = SCHEMAS[-2]
    assert instance_of(schema, random.Random(5)) == instance_of(schema, random.Random(5))


def answer(params: dict, messages=ASK, simulator: Simulator | None = None):
    return (simulator or Simulator()).answer(messages, params)


def test_json_schema_answer_is_a_valid_instance_and_labelled():
    schema = SCHEMAS[-2]
    fmt = {"type": "json_schema", "json_schema": {"name": "page", "schema": schema}}
    reply = answer({"response_format": fmt})
    value = json.loads(reply.text)
    Draft202012Validator(schema).validate(value)
    assert value["title"].startswith("[synthetic]") and reply.finish_reason == "stop"
    assert reply.completion_tokens > 0 and reply.tool_calls is None


def test_json_object_answer_is_an_object():
    value = json.loads(answer({"response_format": {"type": "json_object"}}).text)
    assert isinstance(value, dict) and value["synthetic"] is True


WEATHER = {
    "name": "weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
    },
}
SKU = {"name": "sku", "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}}}
TOOLS = [{"type": "function", "function": SKU}, {"type": "function", "function": WEATHER}]
AFTER_TOOL = [
    *ASK,
    {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                          "function": {"name": "sku", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "messages", "called"),
    [
        (None, ASK, "sku"),
        ("auto", ASK, "sku"),
        ("required", ASK, "sku"),
        ({"type": "function", "function": {"name": "weather"}}, ASK, "weather"),
        ("none", ASK, None),
        ("auto", AFTER_TOOL, None),  # the round's result is answered in text
        ("required", AFTER_TOOL, "sku"),
    ],
)
def test_tool_choice_decides_which_tool_is_called(choice, messages, called):
    params = {"tools": TOOLS, **({"tool_choice": choice} if choice else {})}
    reply = answer(params, messages)
    if called is None:
        assert reply.tool_calls is None and reply.finish_reason == "stop" and reply.text
        return
    (call,) = reply.tool_calls
    assert reply.finish_reason == "tool_calls" and call["function"]["name"] == called
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == called)
    Draft202012Validator(schema).validate(json.loads(call["function"]["arguments"]))
    assert call["id"].startswith("call_") and call["type"] == "function"


def test_tools_and_schema_count_as_prompt_tokens():
    plain = answer({}).prompt_tokens
    assert answer({"tools": TOOLS}).prompt_tokens > plain


def test_invalid_output_knob_and_script():
    fmt = {"response_format": {"type": "json_object"}}
    always = Simulator(invalid_output=1.0)
    for _ in range(3):
        with pytest.raises(ValueError):
            json.loads(answer(fmt, simulator=always).text)
    scripted = Simulator(output_script=deque(["invalid", "valid"]), invalid_output=1.0)
    with pytest.raises(ValueError):
        json.loads(answer(fmt, simulator=scripted).text)
    json.loads(answer(fmt, simulator=scripted).text)  # the scripted valid answer
    assert json.loads(answer(fmt, simulator=Simulator(invalid_output=0.0)).text)


def test_max_tokens_cuts_json_with_finish_reason_length():
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS[-2]}}
    reply = answer({"response_format": fmt, "max_tokens": 5})
    assert reply.finish_reason == "length" and reply.completion_tokens == 5


def test_offline_provider_passes_structured_params_through():
    params = TextParams.model_validate({"tools": TOOLS, "tool_choice": "required"})
    result = OfflineProvider(Simulator()).generate_text(model="m", messages=ASK, params=params)
    assert result.finish_reason == "tool_calls" and result.tool_calls[0]["function"]["name"]


# -- the worker's check of an answer -----------------------------------------------------------

PAGE = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
SCHEMA_PARAMS = {"response_format": {"type": "json_schema",
                                     "json_schema": {"name": "p", "schema": PAGE}}}  # fmt: skip
OBJECT_PARAMS = {"response_format": {"type": "json_object"}}
USAGE = Usage(prompt_tokens=10, completion_tokens=5)


@pytest.mark.parametrize(
    ("params", "text", "finish", "problem"),
    [
        (SCHEMA_PARAMS, '{"n": 3}', "stop", None),
        (SCHEMA_PARAMS, '{"n": "three"}', "stop", "does not match the schema at /n: fails 'type'"),
        (SCHEMA_PARAMS, "{}", "stop", "fails 'required'"),
        (SCHEMA_PARAMS, '{"n": 3', "length", "not valid JSON (the answer was cut at max_tokens)"),
        (OBJECT_PARAMS, '{"any": 1}', "stop", None),
        (OBJECT_PARAMS, "[1, 2]", "stop", "JSON but not an object"),
        (OBJECT_PARAMS, "Sure! {", "stop", "not valid JSON"),
    ],
)
def test_answers_are_checked_against_the_asked_format(params, text, finish, problem):
    result = TextResult(text=text, usage=USAGE, finish_reason=finish)
    if problem is None:
        assert checked(result, TextParams.model_validate(params)).json == json.loads(text)
        return
    with pytest.raises(InvalidOutput) as info:
        checked(result, TextParams.model_validate(params))
    assert problem in info.value.detail and info.value.retryable
    assert info.value.kind == "invalid_output" and info.value.usage == USAGE
    assert text not in info.value.detail  # the answer itself stays out of errors and logs


def test_tool_call_answers_and_text_formats_pass_unchecked():
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    with_call = TextResult(text="", usage=USAGE, tool_calls=calls, finish_reason="tool_calls")
    assert checked(with_call, TextParams.model_validate(SCHEMA_PARAMS)) is with_call
    prose = TextResult(text="hello", usage=USAGE)
    assert checked(prose, TextParams.model_validate({"response_format": {"type": "text"}})) is prose
