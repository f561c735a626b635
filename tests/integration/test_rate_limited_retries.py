"""429s under a job's deadline, not its attempts: real Redis, real databases, the offline
provider's fault knobs, Runners in threads (no Celery)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from itertools import pairwise

import redis
from sqlmodel import select

from models.attempts import Attempt
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope, utcnow
from models.errors import RetryableProviderError
from models.jobs import Job, aware
from models.keys import ApiKey
from models.settings import Settings
from tests.helpers import FakeProvider
from tests.integration.test_fault_tolerance import load, make_runner, submit
from worker import runner as runner_module
from worker.health import RedisHealth
from worker.providers.factory import build_provider
from worker.ratelimit import NoLimiter
from worker.ratelimit_redis import RedisLimiter
from worker.retry import RetryPolicy
from worker.runner import Runner

STORM = "429:0.3,503:0.1"
RETRY_AFTER_S = 0.05
THREADS = 4


def storm_runner(settings: Settings, seed: int) -> Runner:
    """A worker's Runner as worker/tasks.py builds it, on a simulator with its own seed (each
    thread runs its jobs in order, so the faults each job meets are the same on every run)."""
    provider = build_provider(settings)
    provider.simulator.rng = random.Random(seed)
    return Runner(
        engine=get_engine(settings.database_url),
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy.from_settings(settings),
        health=RedisHealth(
            redis.Redis.from_url(settings.redis_url),
            failures=settings.cooldown_failures,
            cooldown_s=settings.cooldown_s,
        ),
        limiter=RedisLimiter.from_settings(settings),
    )


def test_200_jobs_under_30pc_429_and_10pc_503_all_succeed_each_attempt_costed_once(
    client, key, settings
):
    # Given the default 4 attempts and a provider answering 30% 429 (Retry-After 50 ms), 10% 503
    storm = settings.model_copy(
        update={"offline_faults": STORM, "offline_retry_after_s": RETRY_AFTER_S}
    )
    assert storm.max_attempts == 4
    bodies = [
        {"kind": "text", "prompt": f"Tagline {i}", "params": {"max_tokens": 20}} for i in range(200)
    ]
    ids = []
    for start in (0, 100):
        response = client.post(
            "/v1/jobs/batch", json={"jobs": bodies[start : start + 100]}, headers=key
        )
        assert response.status_code == 202, response.text
        ids += [job["id"] for job in response.json()["data"]]

    # When four workers run them
    def work(seed: int) -> list[str]:
        runner = storm_runner(storm, seed)
        return [runner.run(job_id, worker=f"w{seed}") for job_id in ids[seed::THREADS]]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for chunk in pool.map(work, range(THREADS)) for r in chunk]
    # Then every job succeeded, though some needed more than 4 attempts
    assert results == ["succeeded"] * 200
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        jobs = {job.id: job for job in session.exec(select(Job))}
        attempts = list(session.exec(select(Attempt).order_by(Attempt.job_id, Attempt.number)))
        spent = session.exec(select(ApiKey)).one()
    statuses = [a.http_status for a in attempts]
    assert statuses.count(429) > 50 and statuses.count(503) > 10
    assert max(job.attempts for job in jobs.values()) > storm.max_attempts
    by_job: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_job.setdefault(attempt.job_id, []).append(attempt)
    for job_id, job in jobs.items():
        rows = by_job[job_id]
        # every attempt recorded once, numbered in order; one success, the last
        assert [a.number for a in rows] == list(range(1, job.attempts + 1))
        assert [a.outcome for a in rows] == ["retryable_error"] * (job.attempts - 1) + ["succeeded"]
        # the job's cost is exactly the sum of its attempts' costs
        assert job.status == "succeeded" and job.cost_usd == sum(a.cost_usd for a in rows) > 0
        # no retry before its Retry-After
        for before, after in pairwise(rows):
            if before.http_status == 429:
                gap = (aware(after.started_at) - aware(before.finished_at)).total_seconds()
                assert gap >= RETRY_AFTER_S, (job_id, before.number, gap)
    # and the key is charged each attempt once, nothing left reserved
    total = sum((job.cost_usd for job in jobs.values()), Decimal(0))
    assert spent.spent_usd == total and spent.reserved_usd == 0
    report = client.get("/v1/usage", headers=key).json()["total"]
    assert Decimal(str(report["cost_usd"])) == total and report["attempts"] == len(attempts)


def job_with_time_left(client, key, settings, *, seconds: float) -> str:
    """A queued job whose deadline is `seconds` from now."""
    job_id = submit(client, key)
    with session_scope(get_engine(settings.database_url)) as session:
        session.get(Job, job_id).deadline_at = utcnow() + timedelta(seconds=seconds)
    return job_id


def test_a_job_rate_limited_past_its_deadline_ends_timeout_with_its_attempts(client, key, settings):
    # Given a job with 2 s left and a provider that answers only 429 (Retry-After 0.3 s)
    job_id = job_with_time_left(client, key, settings, seconds=2)
    storm = settings.model_copy(update={"offline_faults": "429:1", "offline_retry_after_s": 0.3})
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=build_provider(storm),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=2, initial_s=0.01, max_s=0.02),
    )
    # When it runs
    assert runner.run(job_id) == "failed"
    # Then it kept trying past its 2 attempts until the next wait would pass the deadline,
    # and ended `timeout` with every attempt recorded
    job, attempts = load(settings, job_id)
    assert job.status == "failed" and job.error_type == "timeout"
    assert len(attempts) == job.attempts > 2
    assert {(a.http_status, a.outcome) for a in attempts} == {(429, "retryable_error")}
    assert all(aware(a.started_at) < aware(job.deadline_at) for a in attempts)


class SlowLimiter(NoLimiter):
    """A rate limiter whose wait for capacity outlasts the job's deadline."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.settled: list[tuple[str, int, int]] = []

    def counts_tokens(self, model: str) -> bool:
        return True

    def acquire(self, model: str, tokens: int) -> float:
        time.sleep(self.wait_s)
        return self.wait_s

    def settle(self, model: str, *, estimated: int, used: int) -> None:
        self.settled.append((model, estimated, used))


def test_a_rate_limiter_wait_past_the_deadline_ends_timeout_without_a_call(client, key, settings):
    # Given a job with 0.3 s left and a rate limiter that makes it wait 0.5 s for capacity
    job_id = job_with_time_left(client, key, settings, seconds=0.3)
    provider, limiter = FakeProvider(), SlowLimiter(0.5)
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy.from_settings(settings),
        limiter=limiter,
    )
    # When it runs
    assert runner.run(job_id) == "failed"
    # Then no call started once the wait had passed the deadline: the job ended `timeout`
    job, attempts = load(settings, job_id)
    assert job.status == "failed" and job.error_type == "timeout"
    assert provider.calls == 0 and attempts == []
    # and the tokens charged for the call it never made went back to the limiter
    [(model, estimated, used)] = limiter.settled
    assert model == job.model and estimated > 0 and used == 0


def test_rate_limits_given_back_to_the_queue_do_not_use_up_attempts(client, key, settings):
    # Given max 2 attempts and a provider answering 429 with a long Retry-After three times
    job_id = submit(client, key)
    provider = FakeProvider(
        outcomes=[
            RetryableProviderError("slow", status_code=429, retry_after_s=30, kind="rate_limited")
        ]
        * 3
    )
    runner = make_runner(settings, provider, max_attempts=2, retry_inline_max_s=5)
    # When each wait gives the job back to the queue and it runs again
    assert [runner.run(job_id) for _ in range(4)] == ["rescheduled"] * 3 + ["succeeded"]
    # Then it succeeded on its 4th attempt, each one given back with the Retry-After countdown
    job, attempts = load(settings, job_id)
    assert job.attempts == 4 and [a.http_status for a in attempts] == [429, 429, 429, None]
    assert [countdown for _, _, countdown, _ in runner.published] == [30, 30, 30]


def test_other_failures_still_count_across_runs(client, key, settings):
    # Given max 2 attempts: a 503, a 429 given back to the queue, then another 503
    job_id = submit(client, key)
    provider = FakeProvider(
        outcomes=[
            RetryableProviderError("busy", status_code=503),
            RetryableProviderError("slow", status_code=429, retry_after_s=30, kind="rate_limited"),
            RetryableProviderError("busy", status_code=503),
        ]
    )
    runner = make_runner(settings, provider, max_attempts=2, retry_inline_max_s=5)
    # Then the second 503 is the job's second counted failure, read back from its attempts
    assert [runner.run(job_id) for _ in range(2)] == ["rescheduled", "failed"]
    job, attempts = load(settings, job_id)
    assert job.status == "failed" and job.error_type == "provider_error"
    assert [(a.http_status, a.outcome) for a in attempts] == [
        (503, "retryable_error"),
        (429, "retryable_error"),
        (503, "failed"),
    ]


def test_a_shutting_down_worker_gives_a_rate_limited_job_back_after_its_retry_after(
    client, key, settings
):
    job_id = submit(client, key)
    provider = FakeProvider(
        outcomes=[
            RetryableProviderError("slow", status_code=429, retry_after_s=3, kind="rate_limited")
        ]
    )
    runner = make_runner(settings, provider)
    runner_module.SHUTTING_DOWN.set()
    try:
        assert runner.run(job_id) == "rescheduled"
    finally:
        runner_module.SHUTTING_DOWN.clear()
    # another worker takes it, and not before the provider said
    assert runner.published == [(job_id, "text", 3, False)]  # not a batch job: its own queue
