"""The Runner against real databases with an in-process fake provider (no Celery)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlmodel import select

from models.attempts import Attempt, Image
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.errors import PermanentProviderError, RetryableProviderError
from models.jobs import Job
from models.keys import create_key
from models.pricing import Usage
from tests.helpers import FakeProvider
from worker.ratelimit import NoLimiter
from worker.retry import RetryPolicy
from worker.runner import Runner


@pytest.fixture
def engine(database_url, tiktoken_dir):
    return get_engine(database_url)


def make_job(engine, **request) -> str:
    request = {"kind": "text", "prompt": "Write a haiku", **request}
    with session_scope(engine) as session:
        key, _ = create_key(session, name="runner")
        model = "dall-e-2" if request["kind"] == "image" else "gpt-4o-mini"
        job = Job(key_id=key.id, kind=request["kind"], model=model, request=request)
        session.add(job)
    return job.id


def make_runner(engine, provider, max_attempts=3) -> Runner:
    sleeps: list[float] = []
    runner = Runner(
        engine=engine,
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=max_attempts, initial_s=0.01, max_s=0.02),
        sleep=sleeps.append,
    )
    runner.sleeps = sleeps  # type: ignore[attr-defined]
    return runner


def load(engine, job_id):
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        attempts = list(
            session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
        )
    return job, attempts


def test_text_job_succeeds_with_exact_cost(engine):
    # Given a queued text job on gpt-4o-mini and a provider reporting 100 + 50 tokens
    job_id = make_job(engine)
    provider = FakeProvider(usage=Usage(prompt_tokens=100, cached_tokens=40, completion_tokens=50))
    # When it runs
    assert make_runner(engine, provider).run(job_id, worker="w1") == "succeeded"
    # Then the job holds the output, usage and the exact cost of its one attempt
    job, attempts = load(engine, job_id)
    expected = (60 * Decimal("0.15") + 40 * Decimal("0.075") + 50 * Decimal("0.60")) / 10**6
    assert job.status == "succeeded" and job.output_text == "reply to Write a haiku"
    assert (job.prompt_tokens, job.completion_tokens, job.attempts) == (100, 50, 1)
    assert job.cost_usd == expected == attempts[0].cost_usd
    assert attempts[0].outcome == "succeeded" and attempts[0].worker == "w1"
    assert job.provider == "fake" and job.finished_at is not None


def test_image_job_stores_images(engine):
    job_id = make_job(engine, kind="image", params={"size": "256x256", "n": 2})
    assert make_runner(engine, FakeProvider()).run(job_id) == "succeeded"
    job, attempts = load(engine, job_id)
    with session_scope(engine) as session:
        images = list(session.exec(select(Image).where(Image.job_id == job_id)))
    assert job.image_count == 2 and len(images) == 2
    assert all(img.data.startswith(b"\x89PNG") and img.width == 256 for img in images)
    assert job.cost_usd == Decimal("0.032") == attempts[0].cost_usd


def test_retryable_errors_are_retried_and_recorded(engine):
    # Given a provider that answers 429 (Retry-After 2s) then 503, then succeeds
    job_id = make_job(engine)
    provider = FakeProvider(
        outcomes=[
            RetryableProviderError(
                "slow down", status_code=429, retry_after_s=2, kind="rate_limited"
            ),
            RetryableProviderError("unavailable", status_code=503),
        ]
    )
    runner = make_runner(engine, provider)
    assert runner.run(job_id) == "succeeded"
    job, attempts = load(engine, job_id)
    # Then three attempts are recorded, the first wait honoured Retry-After
    assert [a.outcome for a in attempts] == ["retryable_error", "retryable_error", "succeeded"]
    assert [a.http_status for a in attempts] == [429, 503, None]
    assert runner.sleeps[0] == 2 and job.attempts == 3 and provider.calls == 3


def test_permanent_error_fails_at_once(engine):
    job_id = make_job(engine)
    provider = FakeProvider(outcomes=[PermanentProviderError("bad prompt", status_code=400)])
    assert make_runner(engine, provider).run(job_id) == "failed"
    job, attempts = load(engine, job_id)
    assert provider.calls == 1 and len(attempts) == 1 and attempts[0].outcome == "failed"
    assert job.status == "failed" and job.error_type == "provider_error"
    assert job.error_message == "bad prompt"


def test_retries_stop_at_max_attempts(engine):
    job_id = make_job(engine)
    provider = FakeProvider(outcomes=[RetryableProviderError("down", status_code=500)] * 5)
    assert make_runner(engine, provider, max_attempts=3).run(job_id) == "failed"
    job, attempts = load(engine, job_id)
    assert provider.calls == 3 and [a.outcome for a in attempts] == [
        "retryable_error",
        "retryable_error",
        "failed",
    ]
    assert job.status == "failed" and job.attempts == 3


def test_a_second_delivery_never_runs_the_job_again(engine):
    # Given a job that already ran
    job_id = make_job(engine)
    provider = FakeProvider()
    runner = make_runner(engine, provider)
    assert runner.run(job_id) == "succeeded"
    # When the same message is delivered again, and a message names an unknown job
    assert runner.run(job_id) == "skipped"
    assert runner.run("0" * 32) == "skipped"
    # Then the provider was called once and the job is unchanged
    job, attempts = load(engine, job_id)
    assert provider.calls == 1 and len(attempts) == 1 and job.attempts == 1


def test_unexpected_exception_fails_the_job_instead_of_leaving_it_running(engine):
    class Broken(FakeProvider):
        def generate_text(self, **kwargs):
            raise KeyError("surprise")

    job_id = make_job(engine)
    assert make_runner(engine, Broken()).run(job_id) == "failed"
    job, _ = load(engine, job_id)
    assert job.status == "failed" and job.error_type == "internal_error"


class RecordingLimiter(NoLimiter):
    """Lets every call through and remembers the token estimate each call was charged."""

    def __init__(self, tpm_models: set[str]):
        self.tpm_models = tpm_models
        self.charged: list[tuple[str, int]] = []

    def counts_tokens(self, model: str) -> bool:
        return model in self.tpm_models

    def acquire(self, model: str, tokens: int) -> float:
        self.charged.append((model, tokens))
        return 0.0


@pytest.mark.parametrize(("tpm_models", "charged"), [({"gpt-4o-mini"}, 11 + 40), (set(), 0)])
def test_a_call_is_charged_its_token_estimate_only_under_a_tokens_per_minute_limit(
    engine, tpm_models, charged
):
    # Given a job of 11 prompt tokens (chat overhead included) and max_tokens 40
    job_id = make_job(engine, params={"max_tokens": 40})
    limiter = RecordingLimiter(tpm_models)
    runner = make_runner(engine, FakeProvider())
    runner.limiter = limiter
    assert runner.run(job_id) == "succeeded"
    # Then the estimate is counted (tiktoken) only when a limit needs it
    assert limiter.charged == [("gpt-4o-mini", charged)]
