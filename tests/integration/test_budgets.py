"""Budgets on real databases: reservations at submit, settlement at finish, no overspending."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.attempts import Attempt
from models.budgets import reserve
from models.db import get_engine, session_scope
from models.errors import BudgetExceeded, RetryableProviderError
from models.jobs import Job
from models.keys import ApiKey, create_key
from models.pricing import Usage
from tests.helpers import FakeProvider, auth, quick_runner
from tests.integration.test_api_contract import run_all
from worker.output import InvalidOutput

#: one job of this shape may cost at most 0.000028 USD on gpt-4.1-nano (see ESTIMATE)
JOB = {
    "kind": "text",
    "prompt": "Write a haiku",
    "model": "gpt-4.1-nano",
    "params": {"max_tokens": 67},
}
ESTIMATE = (11 * Decimal("0.10") + 67 * Decimal("0.40")) / 10**6


def key_with_budget(database_url: str, budget: Decimal, period="total") -> tuple[str, str]:
    with session_scope(get_engine(database_url)) as session:
        key, secret = create_key(session, name="budgeted", budget_usd=budget, period=period)
    return key.id, secret


def load_key(database_url: str, key_id: str) -> ApiKey:
    with session_scope(get_engine(database_url)) as session:
        return session.get(ApiKey, key_id)


def test_fifty_concurrent_submits_against_a_budget_for_ten_accept_exactly_ten(settings):
    # Given a key whose budget fits ten worst-case estimates (and half of an eleventh)
    key_id, secret = key_with_budget(settings.database_url, ESTIMATE * 10 + ESTIMATE / 2)
    with TestClient(create_app(settings)) as client:
        # When fifty submits race
        def submit(_):
            return client.post("/v1/jobs", json=JOB, headers=auth(secret))

        with ThreadPoolExecutor(max_workers=25) as pool:
            responses = list(pool.map(submit, range(50)))
        # Then exactly ten are accepted and forty get 402 with a reason
        codes = sorted(r.status_code for r in responses)
        assert codes.count(202) == 10 and codes.count(402) == 40, codes
        refused = next(r for r in responses if r.status_code == 402)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "budget" in refused.json()["detail"]
        jobs = client.get("/v1/jobs", params={"limit": 100}, headers=auth(secret)).json()["data"]
    assert len(jobs) == 10
    key = load_key(settings.database_url, key_id)
    assert key.reserved_usd == ESTIMATE * 10 and key.spent_usd == 0


def test_finishing_settles_the_reservation_to_the_real_cost(settings):
    key_id, secret = key_with_budget(settings.database_url, Decimal("1"))
    with TestClient(create_app(settings)) as client:
        ids = [
            client.post("/v1/jobs", json=JOB, headers=auth(secret)).json()["id"] for _ in range(3)
        ]
        assert load_key(settings.database_url, key_id).reserved_usd == 3 * ESTIMATE
        run_all(settings, ids)  # FakeProvider: 100 prompt + 50 completion tokens each
        costs = [
            Decimal(str(client.get(f"/v1/jobs/{i}", headers=auth(secret)).json()["cost_usd"]))
            for i in ids
        ]
    key = load_key(settings.database_url, key_id)
    assert key.reserved_usd == 0
    assert key.spent_usd == sum(costs) == 3 * (100 * Decimal("0.10") + 50 * Decimal("0.40")) / 10**6


def test_a_key_without_a_budget_reserves_nothing_but_is_charged_what_it_spent(settings):
    # Given a key with no budget (its submits must not queue on the key's row lock)
    with session_scope(get_engine(settings.database_url)) as session:
        key, secret = create_key(session, name="unlimited")
    with TestClient(create_app(settings)) as client:
        ids = [
            client.post("/v1/jobs", json=JOB, headers=auth(secret)).json()["id"] for _ in range(2)
        ]
        # Then nothing is held against the key, while the jobs still show their worst case
        assert load_key(settings.database_url, key.id).reserved_usd == 0
        usage = client.get("/v1/usage", headers=auth(secret)).json()["total"]
        assert Decimal(str(usage["reserved_usd"])) == 2 * ESTIMATE
        run_all(settings, ids)
    # And finishing charges the real cost without pushing the reservation below zero
    settled = load_key(settings.database_url, key.id)
    assert settled.reserved_usd == 0
    assert settled.spent_usd == 2 * (100 * Decimal("0.10") + 50 * Decimal("0.40")) / 10**6


def test_a_spent_budget_refuses_with_402_and_stores_nothing(settings):
    key_id, secret = key_with_budget(settings.database_url, ESTIMATE / 2)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json=JOB, headers=auth(secret))
        assert response.status_code == 402
        body = response.json()
        assert body["title"] == "Budget exhausted" and "left" in body["detail"]
        assert client.get("/v1/jobs", headers=auth(secret)).json()["data"] == []
    assert load_key(settings.database_url, key_id).reserved_usd == 0


def test_a_job_stored_while_the_broker_is_down_keeps_its_reservation(settings):
    key_id, secret = key_with_budget(settings.database_url, Decimal("1"))
    dead = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(dead)) as client:
        assert client.post("/v1/jobs", json=JOB, headers=auth(secret)).status_code == 202
    assert load_key(settings.database_url, key_id).reserved_usd == ESTIMATE


def test_a_monthly_budget_starts_again_each_month(settings):
    key_id, _ = key_with_budget(settings.database_url, ESTIMATE, period="monthly")
    engine = get_engine(settings.database_url)
    november = datetime(2026, 11, 20, tzinfo=UTC)
    with session_scope(engine) as session:
        key = session.get(ApiKey, key_id)
        key.period_start, key.spent_usd = datetime(2026, 11, 1, tzinfo=UTC), ESTIMATE
        session.add(key)
    with session_scope(engine) as session, pytest.raises(BudgetExceeded):
        reserve(session, key=session.get(ApiKey, key_id), amount=ESTIMATE, now=november)
    with session_scope(engine) as session:  # December: spent starts at 0 again
        reserve(
            session,
            key=session.get(ApiKey, key_id),
            amount=ESTIMATE,
            now=datetime(2026, 12, 2, tzinfo=UTC),
        )
    key = load_key(settings.database_url, key_id)
    assert key.spent_usd == 0 and key.reserved_usd == ESTIMATE


def test_a_billed_failed_attempt_then_a_success_charges_the_jobs_whole_cost(settings):
    # Given a budgeted job whose first call fails after the provider billed it
    key_id, secret = key_with_budget(settings.database_url, Decimal("1"))
    billed = Usage(prompt_tokens=100, completion_tokens=50)
    provider = FakeProvider(outcomes=[RetryableProviderError("bad", status_code=500, usage=billed)])
    runner = quick_runner(settings.database_url, provider)
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json=JOB, headers=auth(secret)).json()["id"]
    # When it succeeds on its second attempt
    assert runner.run(job_id) == "succeeded"
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, job_id)
        costs = [a.cost_usd for a in session.exec(select(Attempt).where(Attempt.job_id == job_id))]
    # Then the key is charged both billed calls, exactly once, and holds nothing
    key = load_key(settings.database_url, key_id)
    assert len(costs) == 2 and all(cost > 0 for cost in costs)
    assert key.spent_usd == job.cost_usd == sum(costs) and key.reserved_usd == 0


#: a call of JOB's shape that the provider billed: 11 prompt and 60 completion tokens
BILLED = Usage(prompt_tokens=11, completion_tokens=60)
BILLED_USD = (11 * Decimal("0.10") + 60 * Decimal("0.40")) / 10**6


def budgeted_job(settings, budget: Decimal, outcomes: list) -> tuple[str, str, FakeProvider]:
    key_id, secret = key_with_budget(settings.database_url, budget)
    provider = FakeProvider(outcomes=outcomes, usage=BILLED)
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/jobs", json=JOB, headers=auth(secret)).json()["id"]
    return key_id, job_id, provider


def test_a_billed_retry_the_budget_cannot_hold_ends_the_job_instead_of_overspending(settings):
    # Given a budget that holds the job's worst case and half a call more, and a first answer
    # that is billed but not in the asked format
    assert BILLED_USD < ESTIMATE
    key_id, job_id, provider = budgeted_job(
        settings,
        ESTIMATE + BILLED_USD / 2,
        [InvalidOutput("the answer is not valid JSON", usage=BILLED)],
    )
    # When it runs: a second call would need another BILLED_USD held, which the budget lacks
    assert quick_runner(settings.database_url, provider).run(job_id) == "failed"
    # Then it made one call, failed `budget_exceeded` saying why, and the key paid that call only
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, job_id)
        outcomes = [
            a.outcome for a in session.exec(select(Attempt).where(Attempt.job_id == job_id))
        ]
    assert provider.calls == 1 and job.attempts == 1 and outcomes == ["failed"]
    assert job.error_type == "budget_exceeded"
    assert "another attempt of this job needs 0.0000251 USD" in job.error_message
    key = load_key(settings.database_url, key_id)
    assert key.spent_usd == job.cost_usd == BILLED_USD and key.reserved_usd == 0
    assert key.spent_usd <= key.budget_usd


def test_billed_retries_the_budget_holds_run_and_release_every_hold(settings):
    # Given a budget for the worst case and two billed failures more
    key_id, job_id, provider = budgeted_job(
        settings,
        ESTIMATE + 2 * BILLED_USD,
        [RetryableProviderError("busy", status_code=500, usage=BILLED)] * 2,
    )
    # When it fails twice, billed, then succeeds
    assert quick_runner(settings.database_url, provider).run(job_id) == "succeeded"
    # Then the key is charged the three calls and holds nothing: each hold was released
    key = load_key(settings.database_url, key_id)
    assert provider.calls == 3
    assert key.spent_usd == 3 * BILLED_USD <= key.budget_usd and key.reserved_usd == 0


def test_a_billed_retry_given_back_to_the_queue_keeps_its_hold_until_the_job_ends(settings):
    # Given a billed 503 whose Retry-After is too long to wait in a worker thread
    key_id, job_id, provider = budgeted_job(
        settings,
        ESTIMATE + BILLED_USD,
        [RetryableProviderError("busy", status_code=503, usage=BILLED, retry_after_s=30)],
    )
    published: list = []
    runner = quick_runner(settings.database_url, provider, publish=lambda *a: published.append(a))
    # When it goes back to the queue, then runs again (another run, from the job's row)
    assert runner.run(job_id) == "rescheduled" and published
    assert load_key(settings.database_url, key_id).reserved_usd == ESTIMATE + BILLED_USD
    assert runner.run(job_id) == "succeeded"
    # Then both calls are charged and the hold went with the job's end
    key = load_key(settings.database_url, key_id)
    assert key.spent_usd == 2 * BILLED_USD and key.reserved_usd == 0


class StolenDuringCall(FakeProvider):
    """Another delivery takes the job while the call runs; the call is billed and fails."""

    def __init__(self, database_url: str):
        super().__init__(outcomes=[InvalidOutput("not JSON", usage=BILLED)], usage=BILLED)
        self.database_url = database_url

    def generate_text(self, **kwargs):
        with session_scope(get_engine(self.database_url)) as session:
            session.exec(select(Job)).one().claim_token = "another-delivery"
        return super().generate_text(**kwargs)


def test_a_billed_failed_call_whose_claim_was_lost_is_still_charged(settings):
    _key_id, job_id, _ = budgeted_job(settings, Decimal(1), [])
    provider = StolenDuringCall(settings.database_url)
    assert quick_runner(settings.database_url, provider).run(job_id) == "lost"
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, job_id)
    assert job.cost_usd == BILLED_USD and job.attempts == 1  # counted on the job
