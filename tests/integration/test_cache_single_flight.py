"""Single flight on real Redis and real databases: identical requests submitted while the first is
unfinished make no second provider call; they end with it, or one runs if it is cancelled."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import redis
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.db import get_engine, session_scope, utcnow
from models.errors import PermanentProviderError
from models.jobs import Job
from models.keys import ApiKey, create_key
from tests.helpers import FakeProvider, auth
from tests.integration.test_cache import CACHED, make_runner, submit
from worker.sweeper import Sweeper


def jobs_of(settings, ids: list[str]) -> dict[str, Job]:
    with session_scope(get_engine(settings.database_url)) as session:
        return {job.id: job for job in session.exec(select(Job).where(Job.id.in_(ids)))}


def run_every(settings, provider, ids: list[str]) -> list[str]:
    """Deliver every job's message to a worker (a follower's is skipped: it is never claimed)."""
    runner = make_runner(settings, provider)
    return [runner.run(job_id) for job_id in ids]


_COUNTING = threading.Lock()


class CountingProvider(FakeProvider):
    """Counts calls under a lock: the proof below runs its runners in threads."""

    def _next(self) -> None:
        with _COUNTING:
            super()._next()


def test_twenty_identical_submits_at_once_make_exactly_one_provider_call(settings, key):
    # Given the real API app
    with TestClient(create_app(settings)) as client:
        barrier = threading.Barrier(20)

        def send(_):
            barrier.wait()
            return client.post("/v1/jobs", json=CACHED, headers=key)

        # When twenty identical requests are submitted at once
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(send, range(20)))
        assert [r.status_code for r in responses] == [202] * 20, [r.text for r in responses]
        ids = [r.json()["id"] for r in responses]
        # Then exactly one leads; every other one follows it
        stored = jobs_of(settings, ids)
        assert len(stored) == 20
        leaders = [job for job in stored.values() if job.cache_source_id is None]
        assert len(leaders) == 1, [j.cache_source_id for j in stored.values()]
        leader = leaders[0]
        # When every message is delivered, several at once
        provider = CountingProvider()
        runner = make_runner(settings, provider)
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(runner.run, ids))
        # Then one provider call answered all twenty, with the same text
        assert provider.calls == 1 and sorted(outcomes).count("succeeded") == 1
        shown = [client.get(f"/v1/jobs/{i}", headers=key).json() for i in ids]
    assert {job["status"] for job in shown} == {"succeeded"}
    assert len({job["output"]["text"] for job in shown}) == 1
    followers = [job for job in shown if job["id"] != leader.id]
    assert all(
        job["cache"]["hit"] and job["cache"]["source_job_id"] == leader.id for job in followers
    )
    assert all(job["cost_usd"] == 0 and job["attempts"] == 0 for job in followers)
    assert {job["cache"]["saved_usd"] for job in followers} == {
        float(leader_cost(settings, leader.id))
    }


def leader_cost(settings, job_id: str) -> Decimal:
    return jobs_of(settings, [job_id])[job_id].cost_usd


def test_a_batch_repeating_a_request_runs_it_once(client, key, settings):
    body = {"jobs": [CACHED, CACHED, {**CACHED, "prompt": "Write a limerick"}]}
    jobs = client.post("/v1/jobs/batch", json=body, headers=key).json()["data"]
    first, repeat, other = jobs
    assert repeat["cache"] == {"hit": False, "source_job_id": first["id"], "saved_usd": 0}
    assert other["cache"]["source_job_id"] is None
    provider = FakeProvider()
    run_every(settings, provider, [j["id"] for j in jobs])
    assert provider.calls == 2
    assert client.get(f"/v1/jobs/{repeat['id']}", headers=key).json()["cache"]["hit"] is True


def test_a_cancelled_leader_hands_the_request_to_exactly_one_follower(client, key, settings):
    # Given a queued leader and three followers
    leader, *followers = (submit(client, key) for _ in range(4))
    assert all(f["cache"]["source_job_id"] == leader["id"] for f in followers)
    # When the leader is cancelled before it runs
    assert client.post(f"/v1/jobs/{leader['id']}/cancel", headers=key).status_code == 200
    # Then the oldest follower leads now, and the others follow it
    stored = jobs_of(settings, [f["id"] for f in followers])
    successor = followers[0]["id"]
    assert stored[successor].cache_source_id is None and stored[successor].status == "queued"
    assert {stored[f["id"]].cache_source_id for f in followers[1:]} == {successor}
    # and when every message is delivered, one call answers them all
    provider = FakeProvider()
    run_every(settings, provider, [leader["id"], *(f["id"] for f in followers)])
    assert provider.calls == 1
    ended = jobs_of(settings, [f["id"] for f in followers])
    assert {job.status for job in ended.values()} == {"succeeded"}
    assert ended[successor].attempts == 1
    assert {ended[f["id"]].cache_source_id for f in followers[1:]} == {successor}


def test_a_leader_cancelled_while_running_hands_on_its_request(client, key, settings):
    leader, follower = submit(client, key), submit(client, key)

    class CancelledDuringCall(FakeProvider):
        def generate_text(self, **kwargs):
            client.post(f"/v1/jobs/{leader['id']}/cancel", headers=key)
            return super().generate_text(**kwargs)

    first = CancelledDuringCall()
    assert make_runner(settings, first).run(leader["id"]) == "cancelled"
    promoted = jobs_of(settings, [follower["id"]])[follower["id"]]
    assert promoted.status == "queued" and promoted.cache_source_id is None
    assert make_runner(settings, FakeProvider()).run(follower["id"]) == "succeeded"


def test_a_cancelled_follower_ends_like_any_cancelled_job(client, key, settings):
    leader, follower = submit(client, key), submit(client, key)
    cancelled = client.post(f"/v1/jobs/{follower['id']}/cancel", headers=key).json()
    assert cancelled["status"] == "cancelled"
    provider = FakeProvider()
    run_every(settings, provider, [leader["id"], follower["id"]])
    assert provider.calls == 1
    assert jobs_of(settings, [follower["id"]])[follower["id"]].status == "cancelled"


def test_followers_fail_with_their_leader_and_release_their_budget(client, settings):
    with session_scope(get_engine(settings.database_url)) as session:
        row, secret = create_key(session, name="budgeted", budget_usd=Decimal("1"))
    key = auth(secret)
    leader, *followers = (submit(client, key) for _ in range(3))
    failing = FakeProvider(outcomes=[PermanentProviderError("refused", kind="bad_request")])
    run_every(settings, failing, [leader["id"], *(f["id"] for f in followers)])
    assert failing.calls == 1
    for job in (client.get(f"/v1/jobs/{f['id']}", headers=key).json() for f in followers):
        assert job["status"] == "failed" and job["error"]["type"] == "bad_request"
        assert job["cost_usd"] == 0 and job["cache"]["hit"] is False
    with session_scope(get_engine(settings.database_url)) as session:
        assert session.get(ApiKey, row.id).reserved_usd == 0


def test_the_sweeper_ends_followers_a_dead_worker_left_waiting(client, key, settings):
    # Given a leader whose worker finished it, then died before ending its followers
    leader, follower = submit(client, key), submit(client, key)
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        job = session.get(Job, leader["id"])
        job.status, job.output_text, job.finish_reason = "succeeded", "the answer", "stop"
        job.finished_at, job.reserved_usd = utcnow(), Decimal(0)
        session.add(job)
    sent: list[str] = []
    sweeper = Sweeper(
        engine,
        redis.Redis.from_url(settings.redis_url),
        lambda job_id, _kind, _delay, _batch: sent.append(job_id),
        interval_s=1,
        redispatch_after_s=300,
    )
    # When the sweeper runs
    sweeper.sweep_once()
    # Then the follower ended with the leader's output, and nothing was published
    shown = client.get(f"/v1/jobs/{follower['id']}", headers=key).json()
    assert shown["status"] == "succeeded" and shown["output"]["text"] == "the answer"
    assert sent == []


def test_the_sweeper_promotes_a_follower_of_a_cancelled_leader(client, key, settings):
    leader, follower = submit(client, key), submit(client, key)
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:  # cancelled by a process that died before handing on
        job = session.get(Job, leader["id"])
        job.status = "cancelled"
        session.add(job)
        stale = session.get(Job, follower["id"])
        stale.created_at = utcnow().replace(year=2020)  # past the outbox's grace
        session.add(stale)
    sent: list[str] = []
    sweeper = Sweeper(
        engine,
        redis.Redis.from_url(settings.redis_url),
        lambda job_id, _kind, _delay, _batch: sent.append(job_id),
        interval_s=1,
        redispatch_after_s=300,
    )
    sweeper.sweep_once()
    assert sent == [follower["id"]]
    assert make_runner(settings, FakeProvider()).run(follower["id"]) == "succeeded"


def test_hits_and_followers_open_their_webhooks_when_they_end(settings):
    # Given a key with a webhook URL and its signing secret
    from models.keys import rotate_webhook_secret
    from models.webhooks import WebhookDelivery

    allowed = settings.model_copy(update={"webhook_allow_private": True})
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        row, secret = create_key(session, name="hooks", webhook_url="http://127.0.0.1:9/hook")
    with session_scope(engine) as session:
        rotate_webhook_secret(session, ref=row.id)
    key = auth(secret)
    with TestClient(create_app(allowed)) as client:
        # When a leader and a follower end with one call, and a later identical job hits
        leader, follower = submit(client, key), submit(client, key)
        run_every(settings, FakeProvider(), [leader["id"], follower["id"]])
        hit = submit(client, key)
    assert hit["cache"]["hit"] is True
    # Then each of the three jobs has one delivery of its own end
    with session_scope(engine) as session:
        deliveries = list(session.exec(select(WebhookDelivery)))
    events = {d.job_id: d.event for d in deliveries}
    assert events == {job["id"]: "job.succeeded" for job in (leader, follower, hit)}


def test_an_image_follower_serves_its_leaders_bytes(client, key, settings):
    body = {
        "kind": "image",
        "prompt": "a red fox",
        "params": {"size": "256x256"},
        "policy": {"cache_ttl_s": 60},
    }
    leader, follower = submit(client, key, body), submit(client, key, body)
    provider = FakeProvider()
    run_every(settings, provider, [leader["id"], follower["id"]])
    assert provider.calls == 1
    shown = client.get(f"/v1/jobs/{follower['id']}", headers=key).json()
    assert shown["output"]["images"][0]["url"] == f"/v1/jobs/{follower['id']}/images/0"
    mine = client.get(f"/v1/jobs/{follower['id']}/images/0", headers=key)
    theirs = client.get(f"/v1/jobs/{leader['id']}/images/0", headers=key)
    assert mine.status_code == 200 and mine.content == theirs.content


def test_a_follower_past_its_deadline_times_out_and_its_leader_leaves_it_alone(settings):
    # Given a budgeted key with a webhook, a leader and two followers still waiting for it
    from datetime import timedelta

    from models.keys import rotate_webhook_secret
    from models.webhooks import WebhookDelivery

    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        row, secret = create_key(
            session, name="late", budget_usd=Decimal("1"), webhook_url="http://127.0.0.1:9/hook"
        )
    with session_scope(engine) as session:
        rotate_webhook_secret(session, ref=row.id)
    key = auth(secret)
    allowed = settings.model_copy(update={"webhook_allow_private": True})
    with TestClient(create_app(allowed)) as client:
        leader, late, patient = (submit(client, key) for _ in range(3))
        assert {late["cache"]["source_job_id"], patient["cache"]["source_job_id"]} == {leader["id"]}
        # and one follower's deadline passes while the leader has not ended
        with session_scope(engine) as session:
            job = session.get(Job, late["id"])
            job.deadline_at = utcnow() - timedelta(seconds=1)
            session.add(job)
        # When the sweeper runs
        sweeper = Sweeper(
            engine,
            redis.Redis.from_url(settings.redis_url),
            lambda *_message: None,
            interval_s=1,
            redispatch_after_s=300,
        )
        sweeper.sweep_once()
        # Then that follower failed with `timeout`, spent nothing and holds nothing
        shown = client.get(f"/v1/jobs/{late['id']}", headers=key).json()
        assert shown["status"] == "failed" and shown["error"]["type"] == "timeout"
        assert shown["cost_usd"] == 0 and shown["attempts"] == 0
        stored = jobs_of(settings, [leader["id"], late["id"], patient["id"]])
        assert stored[late["id"]].reserved_usd == 0
        assert stored[leader["id"]].status == stored[patient["id"]].status == "queued"
        with session_scope(engine) as session:
            held = session.get(ApiKey, row.id).reserved_usd
        assert held == stored[leader["id"]].reserved_usd + stored[patient["id"]].reserved_usd
        # When the leader ends afterwards (one call)
        provider = FakeProvider()
        run_every(settings, provider, [leader["id"], late["id"], patient["id"]])
        assert provider.calls == 1
        # Then the follower still waiting got its answer; the timed-out one was left as it was
        after = jobs_of(settings, [late["id"], patient["id"]])
        assert after[patient["id"]].status == "succeeded"
        timed_out = after[late["id"]]
        assert (timed_out.status, timed_out.error_type) == ("failed", "timeout")
        assert timed_out.output_text is None and timed_out.cache_saved_usd is None
    with session_scope(engine) as session:
        budget = session.get(ApiKey, row.id)
        assert budget.reserved_usd == 0 and budget.spent_usd == leader_cost(settings, leader["id"])
        events = {d.job_id: d.event for d in session.exec(select(WebhookDelivery))}
    # and each job's end opened one delivery, the timed-out follower's `job.failed`
    assert events == {
        leader["id"]: "job.succeeded",
        late["id"]: "job.failed",
        patient["id"]: "job.succeeded",
    }
