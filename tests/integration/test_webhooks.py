"""Webhooks against real databases and a real HTTP receiver on loopback (no Celery here: the
delivery loop is driven directly; tests/e2e/test_webhooks_e2e.py runs real processes)."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis
from sqlalchemy import event, update
from sqlmodel import select
from standardwebhooks import Webhook, WebhookVerificationError

from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.jobs import Job
from models.keys import create_key, rotate_webhook_secret
from models.webhooks import WebhookAttempt, WebhookDelivery, publish_on_commit
from tests.helpers import FakeProvider, auth
from tests.webhook_receiver import receiver
from worker.retry import RetryPolicy
from worker.runner import Runner
from worker.sweeper import Sweeper
from worker.webhooks import Deliverer


@pytest.fixture
def settings(settings):
    """Loopback receivers need the private-address rule lifted; retries come quickly."""
    return settings.model_copy(
        update={"webhook_allow_private": True, "webhook_retry_base_s": 0.05, "webhook_timeout_s": 2}
    )


@pytest.fixture
def engine(settings):
    return get_engine(settings.database_url)


def make_key(engine, *, secret: bool = True, webhook_url: str | None = None):
    """A key (with a webhook signing secret unless told not) and its auth headers."""
    with session_scope(engine) as session:
        key, api_secret = create_key(session, name="hooks", webhook_url=webhook_url)
    whsec = None
    if secret:
        with session_scope(engine) as session:
            _, whsec = rotate_webhook_secret(session, ref=key.id)
    return key.id, auth(api_secret), whsec


class Published(list):
    """The delivery messages the loop would send, as (delivery id, countdown)."""

    def __call__(self, delivery_id: str, countdown: float) -> None:
        self.append((delivery_id, countdown))


@pytest.fixture
def deliverer(engine, settings):
    published = Published()
    found = Deliverer(engine, settings, published)
    found.published = published  # type: ignore[attr-defined]
    yield found
    found.close()


def run_job(engine, job_id: str) -> None:
    """Run the job as a worker would (in-process provider, real database)."""
    Runner(
        engine=engine,
        provider=FakeProvider(),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1, initial_s=0.01, max_s=0.02),
    ).run(job_id)


def delivery_of(engine, job_id: str) -> WebhookDelivery:
    with session_scope(engine) as session:
        return session.exec(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()


def attempt_once(deliverer, delivery_id: str, count: int) -> None:
    """Offer the delivery and wait until its `count`th attempt is stored."""
    assert deliverer.offer(delivery_id) == "started"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with session_scope(deliverer.engine) as session:
            stored = session.exec(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
            ).all()
        if len(stored) >= count and not deliverer.in_flight:
            return
        time.sleep(0.05)
    raise AssertionError(f"attempt {count} of {delivery_id} not stored")


def submit(client, headers, **body) -> dict:
    answer = client.post("/v1/jobs", json={"kind": "text", "prompt": "hi", **body}, headers=headers)
    assert answer.status_code == 202, answer.text
    return answer.json()


def test_failed_first_delivery_is_retried_with_the_same_id_and_both_verify(
    client, engine, deliverer
):
    # Given a job whose receiver fails the first delivery and accepts the second
    _, headers, whsec = make_key(engine)
    with receiver(500, 200) as hook:
        job = submit(client, headers, webhook_url=hook.url)
        run_job(engine, job["id"])
        delivery = delivery_of(engine, job["id"])
        # When the delivery is attempted, and attempted again when its retry is due
        attempt_once(deliverer, delivery.id, 1)
        assert [d for d, _ in deliverer.published] == [delivery.id]
        time.sleep(deliverer.published[0][1])
        attempt_once(deliverer, delivery.id, 2)
        first, second = hook.wait_for(2)
    # Then both POSTs carry one webhook-id and verify with the key's secret
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert first.body == second.body
    for got in (first, second):
        payload = Webhook(whsec).verify(got.body, got.headers)
        assert payload["type"] == "job.succeeded"
        assert payload["data"] == client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert second.headers["webhook-signature"].startswith("v1,")
    # And the attempts are listed, the failed one with its status code
    listed = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).json()
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in listed["data"]] == [
        (1, "failed", 500),
        (2, "delivered", 200),
    ]
    assert listed["deliveries"][0]["status"] == "delivered"
    assert listed["deliveries"][0]["host"] == "127.0.0.1"
    assert "/hook" not in json.dumps(listed)  # no URL path (nor credentials) in the listing


def test_money_is_plain_digits_in_the_payload(client, engine, deliverer):
    _, headers, _ = make_key(engine)
    with receiver(200) as hook:
        job = submit(client, headers, webhook_url=hook.url)
        run_job(engine, job["id"])
        attempt_once(deliverer, delivery_of(engine, job["id"]).id, 1)
        body = hook.wait_for(1)[0].body.decode()
    amounts = re.findall(r'"(?:estimated_)?cost_usd":([^,}]+)', body)
    assert amounts and all(re.fullmatch(r"\d+(\.\d+)?", a) for a in amounts), amounts


def test_410_stops_for_good(client, engine, deliverer):
    _, headers, _ = make_key(engine)
    with receiver(410) as hook:
        job = submit(client, headers, webhook_url=hook.url)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        delivery = delivery_of(engine, job["id"])
        attempt_once(deliverer, delivery.id, 1)
        assert hook.wait_for(1)
    assert delivery_of(engine, job["id"]).status == "failed"
    assert deliverer.published == []  # no retry scheduled
    assert deliverer.offer(delivery.id) == "skipped"


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(client, engine, deliverer):
    _, headers, _ = make_key(engine)
    with receiver((302, "/elsewhere")) as hook:
        job = submit(client, headers, webhook_url=hook.url)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        attempt_once(deliverer, delivery_of(engine, job["id"]).id, 1)
        time.sleep(0.3)
        assert [r.path for r in hook.received] == ["/hook"]
    listed = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).json()["data"]
    assert listed[0]["status_code"] == 302 and "redirects are not followed" in listed[0]["error"]
    assert listed[0]["outcome"] == "failed"


def test_cancel_of_a_queued_job_opens_its_delivery_with_the_cancelled_event(
    client, engine, deliverer, settings
):
    _, headers, whsec = make_key(engine)
    with receiver(200) as hook:
        job = submit(client, headers, webhook_url=hook.url)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        attempt_once(deliverer, delivery_of(engine, job["id"]).id, 1)
        got = hook.wait_for(1)[0]
    payload = Webhook(whsec).verify(got.body, got.headers)
    assert payload["type"] == "job.cancelled" and payload["data"]["status"] == "cancelled"
    # the API published the delivery's message (by task name) when the cancel committed
    assert redis.Redis.from_url(settings.redis_url).llen("webhooks") == 1


def test_a_rolled_back_end_publishes_nothing(engine, settings):
    from models.webhooks import OPENED, open_delivery

    key_id, _, _ = make_key(engine)
    sent: list = []
    with session_scope(engine) as session:
        job = Job(key_id=key_id, kind="text", model="gpt-4o-mini", request={}, webhook_url="x")
        session.add(job)
    publish_on_commit(sent.extend)
    try:
        with pytest.raises(RuntimeError), session_scope(engine) as session:
            open_delivery(session, job_id=job.id, key_id=key_id, status="failed", url="x")
            assert session.info[OPENED]
            raise RuntimeError("the end was not written")
        assert sent == []
        with session_scope(engine) as session:
            opened = open_delivery(session, job_id=job.id, key_id=key_id, status="failed", url="x")
        assert sent == [opened]
    finally:
        publish_on_commit(None)


def test_the_key_default_url_is_used_when_the_job_names_none(client, engine, deliverer):
    with receiver(200) as hook:
        _, headers, whsec = make_key(engine, webhook_url=hook.url)
        job = submit(client, headers)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        attempt_once(deliverer, delivery_of(engine, job["id"]).id, 1)
        got = hook.wait_for(1)[0]
    assert Webhook(whsec).verify(got.body, got.headers)["data"]["id"] == job["id"]


def test_a_rotated_secret_signs_from_then_on_and_the_old_one_fails(client, engine, deliverer):
    key_id, headers, old = make_key(engine)
    with receiver(200) as hook:
        first = submit(client, headers, webhook_url=hook.url)
        client.post(f"/v1/jobs/{first['id']}/cancel", headers=headers)
        attempt_once(deliverer, delivery_of(engine, first["id"]).id, 1)
        with session_scope(engine) as session:
            _, new = rotate_webhook_secret(session, ref=key_id)
        second = submit(client, headers, webhook_url=hook.url)
        client.post(f"/v1/jobs/{second['id']}/cancel", headers=headers)
        attempt_once(deliverer, delivery_of(engine, second["id"]).id, 1)
        before, after = hook.wait_for(2)
    assert Webhook(old).verify(before.body, before.headers)
    assert Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)
    assert new != old and new.startswith("whsec_")


def test_deliveries_of_another_keys_job_are_404(client, engine):
    _, headers, _ = make_key(engine)
    _, other, _ = make_key(engine)
    job = submit(client, headers, webhook_url="http://127.0.0.1:9/hook")
    assert client.get(f"/v1/jobs/{job['id']}/webhooks", headers=other).status_code == 404
    listed = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).json()
    assert listed == {"data": [], "deliveries": []}


def test_a_key_without_a_secret_is_refused_with_the_fix(client, engine):
    key_id, headers, _ = make_key(engine, secret=False)
    answer = client.post(
        "/v1/jobs",
        json={"kind": "text", "prompt": "hi", "webhook_url": "http://127.0.0.1:9/x"},
        headers=headers,
    )
    assert answer.status_code == 422
    assert f"genq keys webhook-secret {key_id}" in answer.json()["detail"]
    with session_scope(engine) as session:
        assert session.exec(select(Job)).all() == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "is loopback"),
        ("http://localhost/hook", "is loopback"),
        ("http://10.1.2.3/hook", "is private"),
        ("http://169.254.169.254/latest/meta-data", "is link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "embeds an IPv4 address that is loopback"),
        ("ftp://example.com/hook", "must be an http:// or https:// URL"),
    ],
)
def test_private_urls_are_refused_at_submit_without_the_setting(
    settings, engine, url, reason, tmp_path
):
    from fastapi.testclient import TestClient

    from api.main import create_app

    strict = settings.model_copy(update={"webhook_allow_private": False})
    _, headers, _ = make_key(engine)
    with TestClient(create_app(strict)) as strict_client:
        answer = strict_client.post(
            "/v1/jobs", json={"kind": "text", "prompt": "hi", "webhook_url": url}, headers=headers
        )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert reason in answer.json()["detail"]
    assert answer.json()["errors"][0]["loc"][-1] == "webhook_url"
    with session_scope(engine) as session:
        assert session.exec(select(Job)).all() == []


def test_the_address_is_checked_again_at_delivery(client, engine, settings):
    # Given a job stored while private addresses were allowed
    _, headers, _ = make_key(engine)
    strict = Deliverer(engine, settings.model_copy(update={"webhook_allow_private": False}))
    with receiver(200) as hook:
        job = submit(client, headers, webhook_url=hook.url.replace("127.0.0.1", "localhost"))
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        # When a worker that refuses them delivers it
        attempt_once(strict, delivery_of(engine, job["id"]).id, 1)
        time.sleep(0.2)
        # Then nothing was sent, and the attempt says why
        assert hook.received == []
    strict.close()
    listed = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).json()["data"]
    assert "resolves to" in listed[0]["error"] and "is loopback" in listed[0]["error"]
    assert listed[0]["status_code"] is None


def test_a_receiver_that_never_answers_times_out_without_holding_the_caller(
    client, engine, settings
):
    _, headers, _ = make_key(engine)
    quick = Deliverer(engine, settings.model_copy(update={"webhook_timeout_s": 0.5}))
    with receiver("hang") as hook:
        job = submit(client, headers, webhook_url=hook.url)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        started = time.monotonic()
        assert quick.offer(delivery_of(engine, job["id"]).id) == "started"
        assert time.monotonic() - started < 0.3  # the caller (a Celery thread) is free at once
        hook.wait_for(1)
        deadline = time.monotonic() + 5
        while not client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).json()["data"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    quick.close()
    attempt = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).json()["data"][0]
    assert attempt["error"] == "no answer within 0.5 s" and attempt["latency_ms"] < 1500


def test_the_sweeper_opens_a_missed_end_and_republishes_a_dead_attempt(client, engine, settings):
    # Given a webhook job ended by a path that did not open its delivery
    _, headers, _ = make_key(engine)
    job = submit(client, headers, webhook_url="http://127.0.0.1:9/hook")
    with session_scope(engine) as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status="succeeded"))
    sent: list = []
    sweeper = Sweeper(
        engine,
        None,
        lambda *a: None,
        publish_webhook=lambda d, c: sent.append(d),
        interval_s=1,
        redispatch_after_s=300,
    )
    # When the sweeper runs, Then the delivery exists and its message is sent
    assert sweeper.sweep_webhooks() == 1
    delivery = delivery_of(engine, job["id"])
    assert sent == [delivery.id] and delivery.event == "job.succeeded"
    # And an attempt whose worker died (lease over) is published again; a live one is not
    with session_scope(engine) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id)
            .values(lease_until=delivery.created_at, claim_token="dead")
        )
    assert sweeper.sweep_webhooks() == 1 and sent == [delivery.id, delivery.id]
    assert sweeper.sweep_webhooks() == 0


def run_counting(engine, job_id: str) -> list[str]:
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        run_job(engine, job_id)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return statements


def test_a_plain_job_costs_no_webhook_statement_and_a_webhook_job_two(client, engine):
    # Given a plain job and a webhook job of the same key, and whatever a commit publishes
    _, headers, _ = make_key(engine)
    plain = submit(client, headers)
    hooked = submit(client, headers, webhook_url="http://127.0.0.1:9/hook")
    sent: list = []
    publish_on_commit(sent.extend)
    try:
        # When the worker's Runner runs each
        plain_statements = run_counting(engine, plain["id"])
        assert sent == []
        hooked_statements = run_counting(engine, hooked["id"])
    finally:
        publish_on_commit(None)
    # Then the plain job runs no webhook statement and publishes nothing; the webhook job runs
    # two more (mark the job, insert the delivery) and publishes its delivery on commit
    # (the plain end's guard reads `webhook_url IS NULL`, but writes no webhook column)
    assert not [s for s in plain_statements if "webhook_deliveries" in s or "webhook_id" in s]
    assert len(hooked_statements) == len(plain_statements) + 2
    assert sent == [delivery_of(engine, hooked["id"]).id]


def test_a_full_delivery_loop_puts_the_message_back_and_counts_outcomes(client, engine, settings):
    from prometheus_client import REGISTRY

    def delivered() -> float:
        value = REGISTRY.get_sample_value("genq_webhook_deliveries_total", {"outcome": "delivered"})
        return value or 0

    _, headers, _ = make_key(engine)
    published = Published()
    one = Deliverer(engine, settings.model_copy(update={"webhook_concurrency": 1}), published)
    before = delivered()
    with receiver("hang", then=200) as hook:
        jobs = [submit(client, headers, webhook_url=hook.url) for _ in range(2)]
        for job in jobs:
            client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        first, second = (delivery_of(engine, job["id"]).id for job in jobs)
        assert one.offer(first) == "started"
        hook.wait_for(1)
        # When a second delivery comes while the only slot is taken
        assert one.offer(second) == "busy"
        # Then its message is put back for a second later, and it is not claimed
        assert published == [(second, 1.0)]
        assert delivery_of(engine, jobs[1]["id"]).attempts == 0
    one.close()
    quick = Deliverer(engine, settings)
    with receiver(200) as hook:
        with session_scope(engine) as session:
            session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == second).values(url=hook.url)
            )
        attempt_once(quick, second, 1)
    quick.close()
    assert delivered() == before + 1


def test_url_credentials_go_as_basic_auth_and_never_reach_logs_or_listings(
    client, engine, deliverer, caplog, capsys
):
    import base64
    import logging

    caplog.set_level(logging.DEBUG)
    _, headers, _ = make_key(engine)
    with receiver(200) as hook:
        secret_url = hook.url.replace("http://", "http://hookuser:s3cr3t@") + "?token=t0k3n"
        job = submit(client, headers, webhook_url=secret_url)
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        attempt_once(deliverer, delivery_of(engine, job["id"]).id, 1)
        got = hook.wait_for(1)[0]
    sent = {k.lower(): v for k, v in got.headers.items()}
    assert base64.b64decode(sent["authorization"].split()[1]) == b"hookuser:s3cr3t"
    assert got.path == "/hook?token=t0k3n"
    listed = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=headers).text
    shown = listed + capsys.readouterr().out + "\n".join(r.getMessage() for r in caplog.records)
    # httpx logged the request (it names the URL): only its host was shown
    assert [r for r in caplog.records if r.name == "httpx" and "127.0.0.1" in r.getMessage()]
    for secret in ("s3cr3t", "hookuser", "t0k3n"):
        assert secret not in shown
