"""Cancel, deadlines, fallbacks, rescheduling and the sweeper, on real databases (no Celery)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import select
from structlog.testing import capture_logs

from api.main import create_app
from models import lifecycle
from models.attempts import Attempt
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope, utcnow
from models.errors import RetryableProviderError
from models.jobs import Job, aware, claim_job
from models.lifecycle import reclaim_expired, unpublish
from models.queue import queue_for
from tests.helpers import FakeProvider, auth, new_key
from tests.integration.test_budgets import key_with_budget, load_key
from worker import runner as runner_module
from worker.health import LocalHealth, RedisHealth
from worker.lease import LeaseKeeper
from worker.retry import RetryPolicy
from worker.runner import Runner
from worker.sweeper import Sweeper

LONG = "Write a detailed product description for our spring collection. " * 40


def make_runner(settings, provider, **kwargs) -> Runner:
    published: list[tuple[str, str, float, bool]] = []
    runner = Runner(
        engine=get_engine(settings.database_url),
        provider=provider,
        catalogue=get_catalogue(),
        sleep=lambda _s: None,
        retry=RetryPolicy(max_attempts=kwargs.pop("max_attempts", 4), initial_s=0.01, max_s=0.02),
        publish=lambda *args: published.append(args),
        **kwargs,
    )
    runner.published = published  # type: ignore[attr-defined]
    return runner


def load(settings, job_id):
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, job_id)
        attempts = list(
            session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
        )
    return job, attempts


def submit(client, key, **body):
    response = client.post("/v1/jobs", json={"kind": "text", "prompt": "hi", **body}, headers=key)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_cancelled_queued_job_never_runs(client, key, settings):
    job_id = submit(client, key)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=key)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    provider = FakeProvider()
    assert make_runner(settings, provider).run(job_id) == "skipped"
    assert provider.calls == 0
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=key)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    other = auth(new_key(settings.database_url, "other"))
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=other).status_code == 404


def test_a_running_job_stops_at_the_next_safe_point_and_keeps_its_usage(client, key, settings):
    # Given a running job whose provider is slow to succeed: cancel arrives during the call
    job_id = submit(client, key)

    class CancelDuringCall(FakeProvider):
        def generate_text(self, **kwargs):
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=key).json()["status"] == (
                "running"
            )
            return super().generate_text(**kwargs)

    assert make_runner(settings, CancelDuringCall()).run(job_id) == "cancelled"
    job, attempts = load(settings, job_id)
    assert job.status == "cancelled" and job.output_text is None
    assert [a.outcome for a in attempts] == ["cancelled"] and job.cost_usd == attempts[
        0
    ].cost_usd > 0
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=key).status_code == 409


def test_a_finished_job_cannot_be_cancelled(client, key, settings):
    job_id = submit(client, key)
    make_runner(settings, FakeProvider()).run(job_id)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=key).status_code == 409


def test_a_job_past_its_deadline_fails_with_timeout(client, key, settings):
    job_id = submit(client, key, deadline_s=1)
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, job_id)
        job.deadline_at = utcnow() - timedelta(seconds=1)
        session.add(job)
    provider = FakeProvider()
    assert make_runner(settings, provider).run(job_id) == "failed"
    job, _ = load(settings, job_id)
    assert job.status == "failed" and job.error_type == "timeout" and provider.calls == 0


def test_deadline_above_the_maximum_is_422(client, key, settings):
    body = {"kind": "text", "prompt": "hi", "deadline_s": settings.max_job_deadline_s + 1}
    response = client.post("/v1/jobs", json=body, headers=key)
    assert response.status_code == 422 and "deadline_s" in response.json()["detail"]


def test_a_failing_model_hands_the_job_to_its_fallback(client, key, settings):
    # Given a premium job (gpt-4.1, fallbacks gpt-4o, …) whose first model keeps answering 503
    job_id = submit(client, key, prompt=LONG, policy={"tier": "premium"})

    class FailsOnGpt41(FakeProvider):
        def generate_text(self, *, model, **kwargs):
            self.models = [*getattr(self, "models", []), model]
            if model == "gpt-4.1":
                raise RetryableProviderError("unavailable", status_code=503)
            return super().generate_text(model=model, **kwargs)

    provider = FailsOnGpt41()
    assert make_runner(settings, provider, fallback_after=2).run(job_id) == "succeeded"
    job, attempts = load(settings, job_id)
    # Then after two failures it moved to the next model, which produced the output
    assert provider.models == ["gpt-4.1", "gpt-4.1", "gpt-4o"]
    assert [a.model for a in attempts] == ["gpt-4.1", "gpt-4.1", "gpt-4o"]
    assert job.model == "gpt-4o" and job.status == "succeeded"
    shown = client.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert shown["model"] == "gpt-4o"
    assert [(a["model"], a["outcome"], a["http_status"]) for a in shown["attempt_log"]] == [
        ("gpt-4.1", "retryable_error", 503),
        ("gpt-4.1", "retryable_error", 503),
        ("gpt-4o", "succeeded", None),
    ]


def test_a_cooled_down_model_is_skipped_by_the_next_job(client, key, settings):
    health = LocalHealth(failures=1, cooldown_s=60)
    health.record_failure("gpt-4.1")
    job_id = submit(client, key, prompt=LONG, policy={"tier": "premium"})
    provider = FakeProvider()
    assert make_runner(settings, provider, health=health).run(job_id) == "succeeded"
    assert load(settings, job_id)[0].model == "gpt-4o"


def test_cooldowns_are_shared_through_redis_and_probed_after(settings):
    client = redis.Redis.from_url(settings.redis_url)
    one, two = (RedisHealth(client, failures=2, cooldown_s=0.3) for _ in range(2))
    one.record_failure("m")
    assert two.available("m")
    one.record_failure("m")  # second failure opens the circuit for everyone
    assert not two.available("m") and not one.available("m")
    import time

    time.sleep(0.35)
    assert two.available("m") is True  # half-open: one probe
    assert one.available("m") is False  # …and only one
    two.record_success("m")
    assert one.available("m") and two.available("m")


def test_a_long_retry_after_gives_the_job_back_to_the_queue(client, key, settings):
    job_id = submit(client, key)
    provider = FakeProvider(
        outcomes=[RetryableProviderError("slow down", status_code=429, retry_after_s=30)]
    )
    runner = make_runner(settings, provider, retry_inline_max_s=5)
    assert runner.run(job_id) == "rescheduled"
    job, attempts = load(settings, job_id)
    assert job.status == "queued" and job.claim_token is None and len(attempts) == 1
    assert runner.published == [(job_id, "text", 30, False)]  # not a batch job: its own queue
    # When the message comes back, the job runs on, counting its earlier attempt
    assert runner.run(job_id) == "succeeded"
    job, attempts = load(settings, job_id)
    assert [a.number for a in attempts] == [1, 2] and job.attempts == 2


def test_a_shutting_down_worker_gives_waiting_jobs_back(client, key, settings):
    job_id = submit(client, key)
    provider = FakeProvider(outcomes=[RetryableProviderError("busy", status_code=503)])
    runner = make_runner(settings, provider)
    runner_module.SHUTTING_DOWN.set()
    try:
        assert runner.run(job_id) == "rescheduled"
    finally:
        runner_module.SHUTTING_DOWN.clear()
    # …with the backoff it was about to sleep as the countdown (at most retry_initial_s here)
    assert load(settings, job_id)[0].status == "queued" and 0 <= runner.published[0][2] <= 0.01


def test_the_sweeper_requeues_expired_leases_and_publishes_the_unpublished(client, key, settings):
    engine = get_engine(settings.database_url)
    crashed, stranded = submit(client, key), submit(client, key)
    with session_scope(engine) as session:
        # a worker claimed `crashed` and died: its lease is in the past
        assert claim_job(session, job_id=crashed, worker="dead", lease_s=60)
        session.get(Job, crashed).lease_until = utcnow() - timedelta(seconds=1)
        # submitted long ago: reclaimed, it is also unpublished, and still gets one message
        session.get(Job, crashed).created_at = utcnow() - timedelta(seconds=60)
        # the broker was down when `stranded` was submitted, long enough ago
        unpublish(session, job_id=stranded)
        session.get(Job, stranded).created_at = utcnow() - timedelta(seconds=60)
    published: list[str] = []
    sweeper = recording_sweeper(engine, settings, published)
    nothing_else = {"restored": 0, "lost_in_pop": 0}
    assert sweeper.sweep_once() == {**nothing_else, "reclaimed": 1, "published": 2}
    assert sorted(published) == sorted([crashed, stranded])
    assert sweeper.sweep_once() == {**nothing_else, "reclaimed": 0, "published": 0}  # once
    job, _ = load(settings, crashed)
    assert job.status == "queued" and job.claim_token is None and job.published_at is not None
    # and the old owner can no longer write: its claim token is gone
    assert make_runner(settings, FakeProvider()).run(crashed) == "succeeded"


def test_a_job_cancelled_while_running_and_reclaimed_ends_cancelled_without_a_call(settings):
    # Given a budgeted job whose worker died after its cancel was requested
    key_id, secret = key_with_budget(settings.database_url, Decimal("1"))
    engine = get_engine(settings.database_url)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client, auth(secret))
        with session_scope(engine) as session:
            assert claim_job(session, job_id=job_id, worker="dead", lease_s=60)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(secret)).json()["status"] == (
            "running"
        )
    with session_scope(engine) as session:
        reclaimed = reclaim_expired(session, now=utcnow() + timedelta(seconds=120))
    assert [row[0] for row in reclaimed] == [job_id]
    # When its message comes back to a worker
    provider = FakeProvider()
    assert make_runner(settings, provider).run(job_id) == "cancelled"
    # Then it ends cancelled, the model never called, its reservation released, nothing charged
    job, attempts = load(settings, job_id)
    assert provider.calls == 0 and attempts == []
    assert job.status == "cancelled" and job.error_type == "cancelled" and job.reserved_usd == 0
    key = load_key(settings.database_url, key_id)
    assert key.reserved_usd == 0 and key.spent_usd == 0


def test_a_cancel_during_a_call_that_is_rescheduled_stops_before_the_next_call(
    client, key, settings
):
    # Given a job whose call answers 429 (a long Retry-After) while its cancel is requested
    job_id = submit(client, key)

    class CancelDuringCall(FakeProvider):
        def generate_text(self, **kwargs):
            if self.calls == 0:
                assert client.post(f"/v1/jobs/{job_id}/cancel", headers=key).json()["status"] == (
                    "running"
                )
            return super().generate_text(**kwargs)

    provider = CancelDuringCall(
        outcomes=[RetryableProviderError("slow down", status_code=429, retry_after_s=30)]
    )
    runner = make_runner(settings, provider, retry_inline_max_s=5)
    assert runner.run(job_id) == "rescheduled"  # given back to the queue, flag still set
    # When it is delivered again, it ends cancelled without a second call
    assert runner.run(job_id) == "cancelled"
    job, attempts = load(settings, job_id)
    assert provider.calls == 1 and len(attempts) == 1 and job.status == "cancelled"


def test_the_sweeper_republishes_a_batch_job_only_once_its_lane_has_drained(client, key, settings):
    # Given two batch jobs queued long ago: `waiting`'s message is in the lane, `lost`'s is gone
    engine, lane = get_engine(settings.database_url), redis.Redis.from_url(settings.redis_url)
    waiting, lost, plain = submit(client, key), submit(client, key), submit(client, key)
    long_ago = utcnow() - timedelta(seconds=400)
    with session_scope(engine) as session:
        for job_id in (waiting, lost, plain):
            job = session.get(Job, job_id)
            job.published_at, job.batch_id = long_ago, None if job_id == plain else "batch_x"
    lane.rpush(queue_for("text", batch=True), waiting)
    published: list[str] = []

    def publish(job_id, kind, _delay, batch):  # as the real dispatch: onto the job's queue
        lane.rpush(queue_for(kind, batch=batch), job_id)
        published.append(job_id)

    sweeper = Sweeper(engine, lane, publish, interval_s=1, redispatch_after_s=300)
    # When the sweeper runs while the lane holds messages: no duplicate for the batch jobs
    # (an interactive job long queued is still published again)
    assert sweeper.sweep_once()["published"] == 1 and published == [plain]
    # When the lane drains (a worker takes and runs `waiting`), the lost message is republished
    assert lane.lpop(queue_for("text", batch=True)) == waiting.encode()
    assert make_runner(settings, FakeProvider()).run(waiting) == "succeeded"
    assert sweeper.sweep_once()["published"] == 1 and published == [plain, lost]
    # …once: its new message waits in the lane, even when it is old
    with session_scope(engine) as session:
        session.get(Job, lost).published_at = long_ago
    assert sweeper.sweep_once()["published"] == 0 and published == [plain, lost]


def test_the_sweeper_does_not_publish_a_rescheduled_job_before_its_countdown(client, key, settings):
    # Given a job given back to the queue for a 30 s Retry-After (published with that countdown)
    engine = get_engine(settings.database_url)
    job_id = submit(client, key)
    with session_scope(engine) as session:
        session.get(Job, job_id).created_at = utcnow() - timedelta(seconds=60)
    provider = FakeProvider(
        outcomes=[RetryableProviderError("slow down", status_code=429, retry_after_s=30)]
    )
    runner = make_runner(settings, provider, retry_inline_max_s=5)
    assert runner.run(job_id) == "rescheduled" and runner.published == [(job_id, "text", 30, False)]
    # When the sweeper runs, it does not publish it again (that would retry before Retry-After)
    published: list[str] = []
    sweeper = recording_sweeper(engine, settings, published)
    assert sweeper.sweep_once()["published"] == 0 and published == []
    # But when that publish fails (the broker is down), the sweeper publishes the job
    other = submit(client, key)
    with session_scope(engine) as session:
        session.get(Job, other).created_at = utcnow() - timedelta(seconds=60)

    def broker_down(*_args):
        raise ConnectionError("broker down")

    provider.outcomes = [RetryableProviderError("slow down", status_code=429, retry_after_s=30)]
    runner.publish = broker_down
    with pytest.raises(ConnectionError):
        runner.run(other)
    assert sweeper.sweep_once()["published"] == 1 and published == [other]


def recording_sweeper(engine, settings, published: list[str]) -> Sweeper:
    """A sweeper on the test's Redis that records the job ids it publishes."""
    return Sweeper(
        engine,
        redis.Redis.from_url(settings.redis_url),
        lambda job_id, kind, _delay, _batch: published.append(job_id),
        interval_s=1,
        redispatch_after_s=300,
    )


def test_one_beat_renews_every_held_lease_whose_claim_still_holds(client, key, settings):
    engine = get_engine(settings.database_url)
    ids = [submit(client, key) for _ in range(5)]
    with session_scope(engine) as session:
        held = {
            job_id: claim_job(session, job_id=job_id, worker="w", lease_s=1).claim_token
            for job_id in ids
        }
    # the sweeper took the first back and another worker claimed it again
    with session_scope(engine) as session:
        job = session.get(Job, ids[0])
        job.status, job.claim_token = "queued", None
    with session_scope(engine) as session:
        assert claim_job(session, job_id=ids[0], worker="other", lease_s=1)
    with session_scope(engine) as session:
        renewed = lifecycle.renew_leases(session, held=held, lease_s=600)
    assert renewed == set(ids[1:])  # the lost claim is not renewed, so the keeper says so
    soon = utcnow() + timedelta(seconds=300)
    with session_scope(engine) as session:
        leases = {job_id: aware(session.get(Job, job_id).lease_until) for job_id in ids}
    assert all(leases[job_id] > soon for job_id in ids[1:])
    assert leases[ids[0]] < soon  # the other worker's lease is its own


def test_a_dead_workers_message_is_still_its_jobs_only_while_queued_and_not_republished(
    client, key, settings
):
    engine = get_engine(settings.database_url)
    waits, republished, running, done = (submit(client, key) for _ in range(4))
    taken_at = utcnow() + timedelta(seconds=5)  # each message was taken after its submit…
    with session_scope(engine) as session:
        # …but `republished` was given back with a countdown message after that (a retry)
        session.get(Job, republished).published_at = taken_at + timedelta(seconds=1)
        assert claim_job(session, job_id=running, worker="dead", lease_s=60)
    assert make_runner(settings, FakeProvider()).run(done) == "succeeded"
    taken = dict.fromkeys([waits, republished, running, done, "gone"], taken_at)
    with session_scope(engine) as session:
        assert lifecycle.still_waiting(session, taken=taken) == {waits}
        assert lifecycle.still_waiting(session, taken={}) == set()


def test_a_job_that_ended_during_a_beat_is_not_reported_lost(client, key, settings):
    job_id = submit(client, key)  # queued, not claimed: no lease of this token to renew
    keeper = LeaseKeeper(get_engine(settings.database_url), lease_s=60)
    with capture_logs() as logs:  # the beat's snapshot held it; its run ended since
        keeper._renew({job_id: "token"})
    assert [line for line in logs if line["event"] == "lease.lost"] == []
    keeper._held[job_id] = "token"  # still held: the claim really was lost
    with capture_logs() as logs:
        keeper._renew({job_id: "token"})
    assert [line["job_id"] for line in logs if line["event"] == "lease.lost"] == [job_id]


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(lifecycle, "SWEEP_BATCH", 2)  # 5 leases: three statements in one beat


def test_a_beat_renews_leases_in_batches(client, key, settings, small_batches):
    test_one_beat_renews_every_held_lease_whose_claim_still_holds(client, key, settings)
