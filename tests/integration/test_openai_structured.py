"""Structured output and tools through the real `openai` SDK over HTTP, against the simulator
served on loopback (uvicorn in a thread), with the Runner on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from jsonschema import Draft202012Validator
from sqlmodel import select

from models.attempts import Attempt
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.jobs import Job, job_from_plan
from models.keys import create_key
from models.planning import Defaults, plan_job
from models.schemas import JobCreate, TextParams
from tests.helpers import serve_simulator
from worker.providers.openai_provider import OpenAIProvider
from worker.providers.simulator import Simulator
from worker.retry import RetryPolicy
from worker.runner import Runner

PAGE = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "bullets": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "seo_description": {"type": "string", "maxLength": 160},
    },
    "required": ["title", "bullets", "seo_description"],
    "additionalProperties": False,
}
PAGE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "page", "schema": PAGE, "strict": True},
}
SKU_TOOL = {
    "type": "function",
    "function": {
        "name": "find_sku",
        "description": "Look a product up by name",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
            "required": ["name", "limit"],
        },
    },
}  # fmt: skip


@pytest.fixture
def simulator_url(tiktoken_dir) -> Iterator[str]:
    with serve_simulator(Simulator()) as url:
        yield url


def provider(url: str) -> OpenAIProvider:
    return OpenAIProvider(
        api_key="sk-test", base_url=f"{url}/v1", timeout_s=10, catalogue=get_catalogue()
    )


def test_sdk_returns_tool_calls(simulator_url):
    params = TextParams.model_validate({"tools": [SKU_TOOL], "tool_choice": "required"})
    messages = [{"role": "user", "content": "find the kettle"}]
    result = provider(simulator_url).generate_text(
        model="gpt-4o-mini", messages=messages, params=params
    )
    assert result.finish_reason == "tool_calls" and result.text == ""
    (call,) = result.tool_calls
    assert call["type"] == "function" and call["function"]["name"] == "find_sku"
    arguments = json.loads(call["function"]["arguments"])
    Draft202012Validator(SKU_TOOL["function"]["parameters"]).validate(arguments)
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


def test_sdk_continues_a_tool_round_and_returns_json(simulator_url):
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "find_sku", "arguments": '{"name": "kettle", "limit": 1}'},
    }
    messages = [
        {"role": "user", "content": "a page for the kettle"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": '{"sku": "K-1"}'},
    ]  # fmt: skip
    params = TextParams.model_validate({"tools": [SKU_TOOL], "response_format": PAGE_FORMAT})
    result = provider(simulator_url).generate_text(
        model="gpt-4o-mini", messages=messages, params=params
    )
    assert result.finish_reason == "stop" and result.tool_calls is None
    Draft202012Validator(PAGE).validate(json.loads(result.text))


def _queued_job(engine, body: dict) -> str:
    request = JobCreate.model_validate(body)
    plan = plan_job(request, get_catalogue(), Defaults())
    with session_scope(engine) as session:
        key, _ = create_key(session, name="sdk")
        job = job_from_plan(key_id=key.id, body=request, plan=plan)
        session.add(job)
    return job.id


def test_runner_retries_an_invalid_answer_over_http_then_stores_json(simulator_url, database_url):
    # Given the simulator scripted to answer invalid JSON once
    engine = get_engine(database_url)
    httpx.post(
        f"{simulator_url}/_simulator/script", json={"outputs": ["invalid"]}
    ).raise_for_status()
    job_id = _queued_job(
        engine, {"kind": "text", "prompt": "a page", "params": {"response_format": PAGE_FORMAT}}
    )
    runner = Runner(
        engine=engine,
        provider=provider(simulator_url),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=3, initial_s=0.01, max_s=0.02),
        sleep=lambda _s: None,
    )
    # When the job runs through the SDK
    assert runner.run(job_id) == "succeeded"
    # Then the second answer is stored parsed, and the first was billed
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job.attempts == 2 and job.finish_reason == "stop"
        Draft202012Validator(PAGE).validate(job.output_data["json"])
        assert json.loads(job.output_text) == job.output_data["json"]
    stats = httpx.get(f"{simulator_url}/_simulator/stats").json()
    assert stats["calls"] == {"chat": 2}
    with session_scope(engine) as session:
        first = session.exec(
            select(Attempt).where(Attempt.job_id == job_id, Attempt.number == 1)
        ).one()
    assert first.error_type == "invalid_output" and first.cost_usd > 0
