"""Structured output and tools end to end in-process: the API (submit checks, the job object),
the Runner with the offline simulator, on SQLite and PostgreSQL with real Redis."""

from __future__ import annotations

import json
from collections import deque
from decimal import Decimal

import pytest
import redis
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator, FormatChecker
from sqlmodel import func, select

from api.main import create_app
from models.attempts import Attempt
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.jobs import Job
from tests.helpers import auth, new_key
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import Simulator
from worker.retry import RetryPolicy
from worker.runner import Runner

PRODUCT_PAGE = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 80},
        "bullets": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 5},
        "seo_description": {"type": "string", "minLength": 50, "maxLength": 160},
        "tags": {"type": "array", "items": {"enum": ["eco", "sale", "new"]}},
        "price": {"type": "number", "exclusiveMinimum": 0},
        "launch": {"type": "string", "format": "date"},
    },
    "required": ["title", "bullets", "seo_description", "tags", "price", "launch"],
    "additionalProperties": False,
}
PAGE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "product_page", "schema": PRODUCT_PAGE, "strict": True},
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


def run(settings, job_id, simulator=None, max_attempts=3):
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=OfflineProvider(simulator or Simulator(), get_catalogue()),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=max_attempts, initial_s=0.01, max_s=0.02),
        sleep=lambda _s: None,
    )
    return runner.run(job_id)


def submit(client, key, **body):
    response = client.post("/v1/jobs", json={"kind": "text", **body}, headers=key)
    assert response.status_code == 202, response.text
    return response.json()


def test_schema_valid_output_is_stored_as_json(client, key, settings):
    # Given a product-page job with a strict json_schema
    job = submit(
        client, key, prompt="A page for a green kettle", params={"response_format": PAGE_FORMAT}
    )
    # When it runs on the simulator
    assert run(settings, job["id"]) == "succeeded"
    done = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    # Then the output holds the text, why it stopped, and the parsed, schema-valid JSON
    output = done["output"]
    assert output["finish_reason"] == "stop" and "tool_calls" not in output
    assert json.loads(output["text"]) == output["json"]
    Draft202012Validator(PRODUCT_PAGE, format_checker=FormatChecker()).validate(output["json"])
    assert "[synthetic]" in output["json"]["title"]


def test_json_object_output_is_a_parsed_object(client, key, settings):
    params = {"response_format": {"type": "json_object"}}
    job = submit(client, key, prompt="Answer in JSON", params=params)
    assert run(settings, job["id"]) == "succeeded"
    output = client.get(f"/v1/jobs/{job['id']}", headers=key).json()["output"]
    assert isinstance(output["json"], dict) and json.loads(output["text"]) == output["json"]


def test_plain_job_has_no_json(client, key, settings):
    job = submit(client, key, prompt="Write a haiku", params={"max_tokens": 5})
    assert run(settings, job["id"]) == "succeeded"
    output = client.get(f"/v1/jobs/{job['id']}", headers=key).json()["output"]
    assert set(output) == {"text", "finish_reason"} and output["finish_reason"] == "length"


def _attempts(settings, job_id) -> list[Attempt]:
    with session_scope(get_engine(settings.database_url)) as session:
        query = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)
        return list(session.exec(query))


def test_invalid_output_is_billed_and_retried_then_succeeds(client, key, settings):
    # Given a simulator whose first JSON answer is invalid
    simulator = Simulator(output_script=deque(["invalid"]))
    job = submit(client, key, prompt="A page", params={"response_format": PAGE_FORMAT})
    # When the job runs
    assert run(settings, job["id"], simulator) == "succeeded"
    done = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    # Then the bad answer was a billed, retried attempt and the second one is the output
    first, second = done["attempt_log"]
    assert first["outcome"] == "retryable_error" and first["error_type"] == "invalid_output"
    assert first["completion_tokens"] > 0 and first["cost_usd"] > 0
    assert second["outcome"] == "succeeded" and done["attempts"] == 2
    assert done["output"]["json"]["bullets"]
    costs = sum(Decimal(str(a.cost_usd)) for a in _attempts(settings, job["id"]))
    assert Decimal(str(done["cost_usd"])) == costs


def test_invalid_output_fails_the_job_when_attempts_run_out(client, key, settings):
    # Given a simulator that always answers invalid JSON
    simulator = Simulator(invalid_output=1.0)
    job = submit(client, key, prompt="A page", params={"response_format": PAGE_FORMAT})
    # When the job runs out of its 3 attempts
    assert run(settings, job["id"], simulator, max_attempts=3) == "failed"
    done = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    # Then it failed as invalid_output, with every attempt recorded and billed
    assert done["status"] == "failed" and done["error"]["type"] == "invalid_output"
    assert done["output"] is None and done["attempts"] == 3
    attempts = _attempts(settings, job["id"])
    assert [a.error_type for a in attempts] == ["invalid_output"] * 3
    assert [a.outcome for a in attempts] == ["retryable_error", "retryable_error", "failed"]
    assert all(a.cost_usd > 0 for a in attempts)
    assert Decimal(str(done["cost_usd"])) == sum(a.cost_usd for a in attempts)
    assert done["usage"]["completion_tokens"] == sum(a.completion_tokens for a in attempts)


def test_tool_call_is_stored_and_a_tool_reply_continues_the_round(client, key, settings):
    # Given a job that must call get_weather
    params = {"tools": [WEATHER_TOOL], "tool_choice": "required"}
    first = submit(client, key, prompt="Weather in Oslo?", params=params)
    assert run(settings, first["id"]) == "succeeded"
    output = client.get(f"/v1/jobs/{first['id']}", headers=key).json()["output"]
    # Then the call is stored as the model returned it, with arguments valid for its parameters
    assert output["finish_reason"] == "tool_calls" and output["text"] == ""
    (call,) = output["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    Draft202012Validator(WEATHER_TOOL["function"]["parameters"]).validate(arguments)
    # When the client sends the tool's result back (content null beside tool_calls)
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": output["tool_calls"]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 3}'},
    ]
    follow = submit(client, key, messages=messages, params={"tools": [WEATHER_TOOL]})
    assert run(settings, follow["id"]) == "succeeded"
    # Then the round is answered in text
    answer = client.get(f"/v1/jobs/{follow['id']}", headers=key).json()["output"]
    assert answer["finish_reason"] == "stop" and answer["text"].startswith("[synthetic]")


def test_named_tool_choice_calls_that_tool(client, key, settings):
    other = {"type": "function", "function": {"name": "lookup_sku"}}
    choice = {"type": "function", "function": {"name": "get_weather"}}
    params = {"tools": [other, WEATHER_TOOL], "tool_choice": choice}
    job = submit(client, key, prompt="Weather?", params=params)
    assert run(settings, job["id"]) == "succeeded"
    output = client.get(f"/v1/jobs/{job['id']}", headers=key).json()["output"]
    assert [c["function"]["name"] for c in output["tool_calls"]] == ["get_weather"]


def _job_count(settings) -> int:
    with session_scope(get_engine(settings.database_url)) as session:
        return session.exec(select(func.count()).select_from(Job)).one()


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def schema_format(schema, **spec):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, **spec}}


def tool(**function):
    return {"type": "function", "function": function}


NAMED_NOPE = {"type": "function", "function": {"name": "nope"}}
BAD = [
    ({"response_format": schema_format({"type": "objekt"})}, "not a valid JSON Schema"),
    ({"response_format": schema_format({"minItems": -1})}, "not a valid JSON Schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "json_schema.name",
    ),
    ({"response_format": {"type": "yaml"}}, "expected tags: 'text', 'json_object'"),
    ({"tools": [tool(description="no name")]}, "tools.0.function.name: Field required"),
    ({"tools": [tool(name="bad name!")]}, "function.name: String should match pattern"),
    ({"tools": [tool(name="f", parameters={"type": 3})]}, "not a valid JSON Schema"),
    ({"tools": [tool(name="f"), tool(name="f")]}, "distinct"),
    ({"tools": [WEATHER_TOOL], "tool_choice": NAMED_NOPE}, "not among tools"),
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tool_choice": "sometimes", "tools": [WEATHER_TOOL]}, "params.tool_choice: Input should be"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "params.stop: stop holds 1 to 4 strings"),
    ({"presence_penalty": 2.5}, "presence_penalty: Input should be less than or equal to 2"),
    ({"frequency_penalty": -3}, "penalty: Input should be greater than or equal to -2"),
]


@pytest.mark.parametrize(("params", "needle"), BAD)
def test_bad_structured_params_are_422_and_nothing_is_stored(client, key, settings, params, needle):
    response = client.post(
        "/v1/jobs", json={"kind": "text", "prompt": "x", "params": params}, headers=key
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert needle in problem["detail"] or any(needle in str(e) for e in problem.get("errors", []))
    assert _job_count(settings) == 0
    assert redis.Redis.from_url(settings.redis_url).llen("text") == 0


BAD_MESSAGES = [
    ([{"role": "tool", "tool_call_id": "call_1", "content": "3"}], "answers no tool call"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "content": "3"}], "tool_call_id"),
    ([{"role": "user", "content": "x", "tool_calls": [TOOL_CALL]}], "only assistant"),
    ([{"role": "assistant", "content": None}], "content is required"),
    (
        [
            {"role": "assistant", "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_2", "content": "3"},
        ],
        "answers no tool call",
    ),
]


@pytest.mark.parametrize(("messages", "needle"), BAD_MESSAGES)
def test_bad_tool_messages_are_422(client, key, settings, messages, needle):
    response = client.post("/v1/jobs", json={"kind": "text", "messages": messages}, headers=key)
    assert response.status_code == 422, response.text
    assert needle in response.text
    assert _job_count(settings) == 0


def test_explicit_model_without_the_capability_is_422(settings, tmp_path):
    extra = tmp_path / "catalogue.toml"
    extra.write_text(
        '[models."plain-1"]\nkind = "text"\ntier = "economy"\ncapabilities = ["tools"]\n'
        "context_window = 8000\nmax_output_tokens = 1000\n"
    )
    custom = settings.model_copy(update={"catalogue_path": extra})
    with TestClient(create_app(custom)) as client:
        key = auth(new_key(settings.database_url))
        body = {
            "kind": "text",
            "prompt": "x",
            "model": "plain-1",
            "params": {"response_format": PAGE_FORMAT},
        }
        response = client.post("/v1/jobs", json=body, headers=key)
        assert response.status_code == 422 and "no json_schema" in response.json()["detail"]
        # while the policy skips it, and says so in the routing record
        del body["model"]
        job = client.post("/v1/jobs", json={**body, "policy": {"tier": "economy"}}, headers=key)
        candidates = {c["model"]: c for c in job.json()["routing"]["candidates"]}
        assert candidates["plain-1"]["rejected"] == "no json_schema"
        assert job.json()["model"] != "plain-1"
    assert _job_count(settings) == 1
