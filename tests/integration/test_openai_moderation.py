"""Moderation through the real `openai` SDK over HTTP (`client.moderations.create`), against
the simulator's `/v1/moderations` on loopback, with the Runner on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.jobs import Job, job_from_plan
from models.keys import create_key
from models.moderation import CATEGORIES, parse_flagged_words
from models.planning import Defaults, plan_job
from models.schemas import JobCreate
from tests.helpers import serve_simulator
from worker.moderation import ModerationConfig
from worker.providers.openai_provider import OpenAIProvider
from worker.providers.simulator import Simulator
from worker.retry import RetryPolicy
from worker.runner import Runner

#: the Retry-After (seconds) the simulator sends with its 429s here
RETRY_AFTER_S = 0.25


@pytest.fixture
def simulator_url(tiktoken_dir) -> Iterator[str]:
    simulator = Simulator(
        flagged_words=parse_flagged_words("kill:violence"), retry_after_s=RETRY_AFTER_S
    )
    with serve_simulator(simulator) as url:
        yield url


def provider(url: str) -> OpenAIProvider:
    return OpenAIProvider(
        api_key="sk-test", base_url=f"{url}/v1", timeout_s=10, catalogue=get_catalogue()
    )


def script(url: str, *statuses: int) -> None:
    httpx.post(f"{url}/_simulator/script", json={"statuses": list(statuses)}).raise_for_status()


def calls(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/_simulator/stats").json()["calls"]


def queued(database_url: str, prompt: str, mode: str) -> str:
    request = JobCreate.model_validate(
        {"kind": "text", "prompt": prompt, "policy": {"moderation": mode}}
    )
    with session_scope(get_engine(database_url)) as session:
        key, _ = create_key(session, name="sdk")
        job = job_from_plan(
            key_id=key.id, body=request, plan=plan_job(request, get_catalogue(), Defaults())
        )
        session.add(job)
    return job.id


def run(url: str, database_url: str, job_id: str, slept: list | None = None, **config) -> Job:
    runner = Runner(
        engine=get_engine(database_url),
        provider=provider(url),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=3, initial_s=0.01, max_s=0.02),
        sleep=(slept if slept is not None else []).append,
        moderation=ModerationConfig(**config),
    )
    runner.run(job_id)
    with session_scope(get_engine(database_url)) as session:
        return session.get(Job, job_id)


def test_the_sdk_reads_the_moderation_answer(simulator_url):
    verdict = provider(simulator_url).moderate(
        model="omni-moderation-latest", texts=["hello there", "I will KILL the lights"]
    )
    assert verdict.flagged and verdict.categories == ["violence"]
    assert verdict.model == "omni-moderation-latest" and not verdict.synthetic
    assert next(iter(verdict.scores)) == "violence" and set(verdict.scores) <= set(CATEGORIES)


def test_a_flagged_input_is_blocked_before_the_chat_call(simulator_url, database_url):
    job = run(simulator_url, database_url, queued(database_url, "kill the bugs", "block"))
    assert job.status == "failed" and job.error_type == "moderation_blocked"
    assert job.attempts == 0 and job.cost_usd == 0
    assert job.moderation["input"]["categories"] == ["violence"]
    assert calls(simulator_url) == {"moderations": 1}


def test_moderation_is_retried_on_429_and_5xx_honouring_retry_after(simulator_url, database_url):
    # Given the endpoint answering 429 (with Retry-After) then 500 to the first two calls
    script(simulator_url, 429, 500)
    slept: list[float] = []
    # When a `block` job runs
    job = run(simulator_url, database_url, queued(database_url, "a tagline", "block"), slept)
    # Then the input check went through on its third try, the job succeeded, both checked
    assert job.status == "succeeded" and job.attempts == 1
    assert calls(simulator_url) == {"moderations": 4, "chat": 1}
    assert slept[0] == RETRY_AFTER_S and 0 <= slept[1] <= 0.02
    assert job.moderation["input"]["flagged"] is False
    assert job.moderation["output"]["model"] == "omni-moderation-latest"


def test_an_outage_past_the_retries_fails_the_job(simulator_url, database_url):
    script(simulator_url, 503, 503, 503)
    job = run(simulator_url, database_url, queued(database_url, "a tagline", "block"))
    assert job.status == "failed" and job.error_type == "moderation_unavailable"
    assert "HTTP 503" in job.error_message and job.attempts == 0
    assert calls(simulator_url) == {"moderations": 3}


def test_an_outage_with_allow_goes_on_and_records_the_error(simulator_url, database_url):
    script(simulator_url, 503, 503, 503)
    job_id = queued(database_url, "a tagline", "block")
    job = run(simulator_url, database_url, job_id, on_error="allow")
    assert job.status == "succeeded" and job.output_text
    assert "HTTP 503" in job.moderation["input"]["error"]
    assert calls(simulator_url) == {"moderations": 4, "chat": 1}


def test_a_job_with_moderation_off_calls_only_the_model(simulator_url, database_url):
    job = run(simulator_url, database_url, queued(database_url, "kill the bugs", "off"))
    assert job.status == "succeeded" and job.moderation is None
    assert calls(simulator_url) == {"chat": 1}
