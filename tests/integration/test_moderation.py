"""Moderation end to end in-process: submit over HTTP (ASGI), the Runner with the offline
stand-in, on SQLite and PostgreSQL with real Redis (README "Moderation")."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlmodel import select

from api.main import create_app
from models.attempts import Attempt
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.errors import RetryableProviderError
from models.jobs import Job
from models.keys import ApiKey, create_key
from tests.helpers import RecordingProvider, auth, quick_runner
from worker import runner as runner_module
from worker.moderation import ModerationConfig
from worker.ratelimit_redis import RedisLimiter, keys_of
from worker.retry import RetryPolicy
from worker.runner import Runner

#: the offline answer always starts with `[synthetic]`: this word flags every text output
FLAG_OUTPUTS = "synthetic"


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def key_with(settings, moderation: str | None = None) -> dict[str, str]:
    with session_scope(get_engine(settings.database_url)) as session:
        _key, secret = create_key(
            session, name="mod", moderation=moderation, budget_usd=Decimal(10)
        )
    return auth(secret)


def run(settings, job_id: str, provider: RecordingProvider, **config) -> str:
    retry = RetryPolicy(max_attempts=3, initial_s=0.0, max_s=0.0)
    runner = quick_runner(
        settings.database_url, provider, retry=retry, moderation=ModerationConfig(**config)
    )
    return runner.run(job_id)


def submit(client, key, **body) -> dict:
    response = client.post("/v1/jobs", json={"kind": "text", **body}, headers=key)
    assert response.status_code == 202, response.text
    return response.json()


def stored(settings, job_id: str) -> Job:
    with session_scope(get_engine(settings.database_url)) as session:
        return session.get(Job, job_id)


def key_money(settings, key: dict) -> tuple[Decimal, Decimal]:
    with session_scope(get_engine(settings.database_url)) as session:
        row = session.exec(select(ApiKey).where(ApiKey.name == "mod")).one()
        return row.spent_usd, row.reserved_usd


def checks(stage: str, result: str) -> float:
    labels = {"stage": stage, "result": result}
    return REGISTRY.get_sample_value("genq_moderation_checks_total", labels) or 0.0


def test_block_fails_a_flagged_input_before_any_generation_call(client, settings):
    # Given a key and a job asking for `block` whose input has a flagged word (any case)
    key = key_with(settings)
    provider = RecordingProvider(flagged_words="kill:violence")
    job = submit(
        client,
        key,
        messages=[
            {"role": "system", "content": "You write slogans"},
            {"role": "user", "content": "A slogan to KILL the competition"},
        ],
        policy={"moderation": "block"},
    )
    assert key_money(settings, key)[1] > 0  # its worst case is reserved
    # When it runs
    assert run(settings, job["id"], provider) == "failed"
    # Then it failed moderation_blocked with no generation call, cost 0, nothing reserved
    assert provider.sent == [] and len(provider.moderated) == 1
    assert provider.moderated[0] == ["You write slogans", "A slogan to KILL the competition"]
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["status"] == "failed" and shown["error"]["type"] == "moderation_blocked"
    assert "violence" in shown["error"]["message"]
    assert shown["attempts"] == 0 and shown["cost_usd"] == 0 and shown["output"] is None
    verdict = shown["moderation"]["input"]
    assert verdict["flagged"] is True and verdict["categories"] == ["violence"]
    assert verdict["model"] == "omni-moderation-latest" and verdict["synthetic"] is True
    assert verdict["scores"]["violence"] == 0.99 and len(verdict["scores"]) == 3
    assert shown["moderation"]["output"] is None
    assert key_money(settings, key) == (Decimal(0), Decimal(0))


def test_block_withholds_a_flagged_output_and_keeps_its_cost(client, settings):
    # Given a `block` job whose input is clean and whose output will be flagged
    key = key_with(settings)
    provider = RecordingProvider(flagged_words=FLAG_OUTPUTS)
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "block"})
    # When it runs
    assert run(settings, job["id"], provider) == "failed"
    # Then the call was made and billed, but its text is neither stored nor shown
    assert len(provider.sent) == 1 and len(provider.moderated) == 2
    assert provider.moderated[1][0].startswith("[synthetic]")
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["error"]["type"] == "moderation_blocked" and shown["output"] is None
    assert shown["attempts"] == 1 and shown["cost_usd"] > 0
    assert shown["usage"]["completion_tokens"] > 0
    assert shown["moderation"]["input"]["flagged"] is False
    assert shown["moderation"]["output"]["flagged"] is True
    (attempt,) = shown["attempt_log"]
    assert attempt["error_type"] == "moderation_blocked" and attempt["cost_usd"] > 0
    row = stored(settings, job["id"])
    assert row.output_text is None and row.output_data is None and row.finish_reason is None
    spent, reserved = key_money(settings, key)
    assert reserved == 0 and spent == row.cost_usd > 0


def test_flag_finishes_normally_and_shows_both_verdicts(client, settings):
    # Given a `flag` job whose input and output both hold flagged words
    key = key_with(settings)
    provider = RecordingProvider(flagged_words=f"{FLAG_OUTPUTS},spam:harassment")
    job = submit(client, key, prompt="Spam the inbox", policy={"moderation": "flag"})
    before = checks("input", "flagged")
    # When it runs, then it succeeds with its output and both verdicts on the job
    assert run(settings, job["id"], provider) == "succeeded"
    assert checks("input", "flagged") == before + 1
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["status"] == "succeeded" and shown["output"]["text"].startswith("[synthetic]")
    assert shown["moderation"]["input"]["categories"] == ["harassment"]
    assert shown["moderation"]["output"]["flagged"] is True
    assert shown["moderation"]["output"]["categories"] == ["harassment"]


def test_image_prompt_is_checked_and_an_image_output_is_not(client, settings):
    key = key_with(settings)
    provider = RecordingProvider(flagged_words="fox")
    blocked = submit(client, key, kind="image", prompt="a red Fox", policy={"moderation": "block"})
    clean = submit(client, key, kind="image", prompt="a red cat", policy={"moderation": "block"})
    assert run(settings, blocked["id"], provider) == "failed"
    assert run(settings, clean["id"], provider) == "succeeded"
    # the flagged prompt was never drawn; the clean one was, and only its prompt was checked
    assert provider.image_prompts == ["a red cat"]
    assert provider.moderated == [["a red Fox"], ["a red cat"]]
    shown = client.get(f"/v1/jobs/{clean['id']}", headers=key).json()
    assert shown["moderation"]["output"] is None and len(shown["output"]["images"]) == 1


def test_tool_results_are_part_of_the_checked_input(client, settings):
    key = key_with(settings)
    provider = RecordingProvider(flagged_words="poison")
    call = {"id": "c1", "type": "function", "function": {"name": "find", "arguments": "{}"}}
    job = submit(
        client,
        key,
        messages=[
            {"role": "user", "content": "what is in stock?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "rat poison, 3 left"},
        ],
        policy={"moderation": "block"},
    )
    assert run(settings, job["id"], provider) == "failed"
    assert provider.moderated == [["what is in stock?", "rat poison, 3 left"]]
    assert stored(settings, job["id"]).error_type == "moderation_blocked"


def test_the_key_default_applies_and_a_job_overrides_it(client, settings):
    # Given a key created with moderation `block`
    key = key_with(settings, moderation="block")
    provider = RecordingProvider(flagged_words="kill")
    # When one job sets nothing and another sets `off`
    inherits = submit(client, key, prompt="kill it")
    opts_out = submit(client, key, prompt="kill it", policy={"moderation": "off"})
    # Then the resolved mode is stored in each job's request policy at submit
    assert stored(settings, inherits["id"]).request["policy"]["moderation"] == "block"
    assert stored(settings, opts_out["id"]).request["policy"]["moderation"] == "off"
    assert run(settings, inherits["id"], provider) == "failed"
    assert run(settings, opts_out["id"], provider) == "succeeded"
    # and the job that opted out made no moderation call and has no verdict
    assert provider.moderated == [["kill it"]]
    assert client.get(f"/v1/jobs/{opts_out['id']}", headers=key).json()["moderation"] is None


def test_the_deployment_default_applies_to_keys_without_one(settings, tiktoken_dir):
    flagged = settings.model_copy(update={"moderation": "flag"})
    with TestClient(create_app(flagged)) as client:
        job = submit(client, key_with(settings), prompt="Write a tagline")
    assert stored(settings, job["id"]).request["policy"]["moderation"] == "flag"


def test_a_job_with_moderation_off_makes_no_moderation_call(client, settings):
    key = key_with(settings)
    provider = RecordingProvider(flagged_words="kill")
    job = submit(client, key, prompt="kill it")
    assert stored(settings, job["id"]).request["policy"]["moderation"] == "off"
    assert run(settings, job["id"], provider) == "succeeded"
    assert provider.moderated == [] and stored(settings, job["id"]).moderation is None


def test_a_bad_mode_is_refused_and_nothing_is_stored(client, settings):
    key = key_with(settings)
    response = client.post(
        "/v1/jobs",
        json={"kind": "text", "prompt": "hi", "policy": {"moderation": "strict"}},
        headers=key,
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/jobs", headers=key).json()["data"] == []


def test_usage_counts_blocked_jobs(client, settings):
    key = key_with(settings)
    provider = RecordingProvider(flagged_words="kill")
    for prompt in ("kill it", "kill that", "write a haiku"):
        job = submit(client, key, prompt=prompt, policy={"moderation": "block"})
        run(settings, job["id"], provider)
    report = client.get("/v1/usage", headers=key).json()
    assert report["total"]["moderation_blocked"] == 2 and report["total"]["jobs"] == 3
    by_status = client.get("/v1/usage?group_by=status", headers=key).json()["data"]
    assert {r["status"]: r["moderation_blocked"] for r in by_status} == {
        "failed": 2,
        "succeeded": 0,
    }


def unavailable() -> RetryableProviderError:
    return RetryableProviderError("simulated 503", status_code=503)


@pytest.mark.parametrize("mode", ["block", "flag"])
def test_an_outage_fails_the_job_when_on_error_is_fail(client, settings, mode):
    key = key_with(settings)
    provider = RecordingProvider(moderation_outcomes=[unavailable()] * 3)
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": mode})
    assert run(settings, job["id"], provider, on_error="fail") == "failed"
    # three tries (the retry policy's max_attempts), then no generation call
    assert len(provider.moderated) == 3 and provider.sent == []
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["error"]["type"] == "moderation_unavailable" and shown["cost_usd"] == 0
    assert "HTTP 503" in shown["moderation"]["input"]["error"]


@pytest.mark.parametrize("mode", ["block", "flag"])
def test_an_outage_lets_the_job_through_when_on_error_is_allow(client, settings, mode):
    key = key_with(settings)
    provider = RecordingProvider(moderation_outcomes=[unavailable()] * 3)
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": mode})
    assert run(settings, job["id"], provider, on_error="allow") == "succeeded"
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["moderation"]["input"]["flagged"] is False
    assert "HTTP 503" in shown["moderation"]["input"]["error"]
    assert shown["moderation"]["output"]["error"] is None  # the output check went through


@pytest.mark.parametrize(("mode", "result"), [("block", "failed"), ("flag", "succeeded")])
def test_the_default_outage_rule_fails_block_and_allows_flag(client, settings, mode, result):
    key = key_with(settings)
    provider = RecordingProvider(moderation_outcomes=[unavailable()] * 3)
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": mode})
    assert run(settings, job["id"], provider) == result


def test_a_transient_moderation_failure_is_retried(client, settings):
    key = key_with(settings)
    limited = RetryableProviderError("slow down", status_code=429, retry_after_s=0.0)
    provider = RecordingProvider(moderation_outcomes=[limited, unavailable()])
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "block"})
    assert run(settings, job["id"], provider) == "succeeded"
    assert len(provider.moderated) == 4  # input: 429, 503, ok; output: ok
    assert stored(settings, job["id"]).moderation["input"]["flagged"] is False


def test_moderation_calls_go_through_the_shared_rate_limiter(client, settings):
    # Given a limit on the moderation model, enforced through Redis as any model's
    limited = settings.model_copy(update={"rate_limits": "omni-moderation-latest=600rpm"})
    limiter = RedisLimiter.from_settings(limited)
    requests_key = keys_of("omni-moderation-latest")[0]
    client_redis = redis.Redis.from_url(settings.redis_url)
    assert not client_redis.exists(requests_key)
    job = submit(client, key_with(settings), prompt="a tagline", policy={"moderation": "flag"})
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=RecordingProvider(),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1),
        limiter=limiter,
    )
    # When the job runs, then its two checks were admitted by the limiter under that name
    assert runner.run(job["id"]) == "succeeded"
    assert client_redis.exists(requests_key)


def test_a_job_given_back_to_the_queue_keeps_its_input_verdict(client, settings):
    # Given a `block` job whose first generation call is rate-limited with a long Retry-After
    key = key_with(settings)
    limited = RetryableProviderError("slow down", status_code=429, retry_after_s=30)
    provider = RecordingProvider(outcomes=[limited])
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "block"})
    published: list = []
    runner = quick_runner(
        settings.database_url,
        provider,
        retry=RetryPolicy(max_attempts=3),
        publish=lambda *args: published.append(args),
        retry_inline_max_s=1,
    )
    # When it runs, is given back to the queue, and runs again
    assert runner.run(job["id"]) == "rescheduled" and len(published) == 1
    assert runner.run(job["id"]) == "succeeded"
    # Then its input was checked once (first run) and its output once (second run)
    assert provider.moderated == [["Write a tagline"], [provider.moderated[1][0]]]
    assert provider.moderated[1][0].startswith("[synthetic]") and len(provider.sent) == 2
    verdicts = stored(settings, job["id"]).moderation
    assert set(verdicts) == {"input", "output"}


def test_a_cancel_requested_during_the_input_check_stops_before_generation(client, settings):
    key = key_with(settings)
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "flag"})

    class CancelledWhileChecking(RecordingProvider):
        def moderate(self, *, model: str, texts: list[str]):
            client.post(f"/v1/jobs/{job['id']}/cancel", headers=key).raise_for_status()
            return super().moderate(model=model, texts=texts)

    provider = CancelledWhileChecking()
    assert run(settings, job["id"], provider) == "cancelled"
    assert provider.sent == [] and len(provider.moderated) == 1
    row = stored(settings, job["id"])
    assert row.status == "cancelled" and row.attempts == 0 and row.cost_usd == 0
    assert row.moderation["input"]["flagged"] is False


def give_back_runner(settings, provider: RecordingProvider, slept: list[float]) -> Runner:
    """A Runner with a queue to give jobs back to (published: what it gave back)."""
    published: list[tuple] = []
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=3, initial_s=0.0, max_s=0.0),
        sleep=slept.append,
        publish=lambda *args: published.append(args),
        retry_inline_max_s=5,
    )
    runner.published = published  # type: ignore[attr-defined]
    return runner


def test_a_long_moderation_retry_after_gives_the_job_back_instead_of_sleeping(client, settings):
    # Given a job whose input check answers 429 with a Retry-After longer than an inline wait
    key = key_with(settings)
    limited = RetryableProviderError("slow down", status_code=429, retry_after_s=30)
    provider, slept = RecordingProvider(moderation_outcomes=[limited]), []
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "block"})
    runner = give_back_runner(settings, provider, slept)
    # When it runs, the thread does not sleep: the job goes back to the queue for 30 s
    assert runner.run(job["id"]) == "rescheduled"
    assert (
        slept == [] and provider.sent == [] and runner.published == [(job["id"], "text", 30, False)]
    )
    assert stored(settings, job["id"]).status == "queued"
    # And it runs on when delivered again
    assert runner.run(job["id"]) == "succeeded"


def test_a_shutting_down_worker_gives_back_a_job_whose_answer_check_waits(client, settings):
    # Given a job whose answer's check fails once (a short wait) while the worker shuts down
    key = key_with(settings)
    provider = RecordingProvider(moderation_outcomes=[None, unavailable()])
    slept: list[float] = []
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "block"})
    runner = give_back_runner(settings, provider, slept)
    runner_module.SHUTTING_DOWN.set()
    try:
        assert runner.run(job["id"]) == "rescheduled"
    finally:
        runner_module.SHUTTING_DOWN.clear()
    # Then no thread slept, and the billed call is kept as a retryable attempt, answer dropped
    with session_scope(get_engine(settings.database_url)) as session:
        attempts = list(session.exec(select(Attempt).where(Attempt.job_id == job["id"])))
    assert slept == [] and [a.outcome for a in attempts] == ["retryable_error"]
    assert attempts[0].error_type == "moderation_unavailable" and attempts[0].cost_usd > 0
    shown = stored(settings, job["id"])
    assert shown.status == "queued" and shown.output_text is None
    # When delivered again it generates again and succeeds, charged both calls
    assert runner.run(job["id"]) == "succeeded"
    shown = stored(settings, job["id"])
    assert shown.attempts == 2 and len(provider.sent) == 2
    assert key_money(settings, key) == (shown.cost_usd, Decimal(0))


def test_an_answer_dropped_for_a_later_check_is_held_again_or_the_job_ends(client, settings):
    # Given a job whose answer's check must wait while the worker shuts down, on a key whose
    # budget holds exactly what the job reserved: nothing for another generation
    key = key_with(settings)
    provider = RecordingProvider(moderation_outcomes=[None, unavailable()])
    job = submit(client, key, prompt="Write a tagline", policy={"moderation": "block"})
    with session_scope(get_engine(settings.database_url)) as session:
        row = session.exec(select(ApiKey).where(ApiKey.name == "mod")).one()
        row.budget_usd = row.reserved_usd
    runner = give_back_runner(settings, provider, [])
    runner_module.SHUTTING_DOWN.set()
    try:
        # When its answer is dropped, it is not given back to generate again past the budget
        assert runner.run(job["id"]) == "failed"
    finally:
        runner_module.SHUTTING_DOWN.clear()
    # Then it ended budget_exceeded, charged the one call it made, holding nothing
    shown = stored(settings, job["id"])
    assert shown.status == "failed" and shown.error_type == "budget_exceeded"
    assert len(provider.sent) == 1 and shown.attempts == 1 and runner.published == []
    assert key_money(settings, key) == (shown.cost_usd, Decimal(0))
