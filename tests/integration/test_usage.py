"""Usage reports on real databases: every grouping, date filters, and totals that add up."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.db import get_engine, session_scope, utcnow
from models.errors import ProviderError
from models.jobs import Job
from models.usage import usage_report
from tests.helpers import FakeProvider, auth, new_key
from tests.integration.test_api_contract import run_all


@pytest.fixture
def usage_setup(settings):
    """Two keys; key A has a succeeded text job, a succeeded image job, a failed job and a
    queued one; key B one succeeded job."""
    secret_a, secret_b = new_key(settings.database_url, "a"), new_key(settings.database_url, "b")
    with TestClient(create_app(settings)) as client:
        submit = lambda body, s: client.post("/v1/jobs", json=body, headers=auth(s)).json()["id"]  # noqa: E731
        text = submit({"kind": "text", "prompt": "a", "model": "gpt-4o"}, secret_a)
        image = submit({"kind": "image", "prompt": "b", "model": "dall-e-3"}, secret_a)
        failing = submit({"kind": "text", "prompt": "c", "model": "gpt-4o-mini"}, secret_a)
        queued = submit({"kind": "text", "prompt": "d", "model": "gpt-4.1"}, secret_a)
        other = submit({"kind": "text", "prompt": "e", "model": "gpt-4o"}, secret_b)
        run_all(settings, [text, image, other])
        run_all(settings, [failing], FakeProvider(outcomes=[ProviderError("no", status_code=400)]))
        yield (
            client,
            secret_a,
            secret_b,
            {"text": text, "image": image, "failing": failing, "queued": queued},
        )


def get(client, secret, **params):
    response = client.get("/v1/usage", params=params, headers=auth(secret))
    assert response.status_code == 200, response.text
    return response.json()


def test_group_by_status_counts_jobs_and_reservations(usage_setup):
    client, secret, _, _ = usage_setup
    rows = {r["status"]: r for r in get(client, secret, group_by="status")["data"]}
    assert {s: r["jobs"] for s, r in rows.items()} == {"succeeded": 2, "failed": 1, "queued": 1}
    assert rows["queued"]["reserved_usd"] > 0 and rows["queued"]["attempts"] == 0
    assert rows["succeeded"]["reserved_usd"] == 0 and rows["failed"]["attempts"] == 1


def test_totals_equal_the_sum_over_jobs(usage_setup):
    client, secret, _, ids = usage_setup
    report = get(client, secret, group_by="model")
    jobs = [client.get(f"/v1/jobs/{i}", headers=auth(secret)).json() for i in ids.values()]
    assert round(report["total"]["cost_usd"], 2) == round(sum(j["cost_usd"] for j in jobs), 2)
    assert report["total"]["cost_usd"] == pytest.approx(sum(j["cost_usd"] for j in jobs), abs=1e-9)
    assert report["total"]["jobs"] == 4 and report["total"]["attempts"] == 3
    assert report["total"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in report["data"]))


def test_group_by_key_shows_only_the_callers_key(usage_setup):
    client, secret_a, secret_b, _ = usage_setup
    rows = get(client, secret_a, group_by="key")["data"]
    assert len(rows) == 1 and rows[0]["name"] == "a" and rows[0]["jobs"] == 4
    assert get(client, secret_b, group_by="key")["data"][0]["jobs"] == 1


def test_operator_report_covers_every_key(usage_setup, settings):
    with session_scope(get_engine(settings.database_url)) as session:
        report = usage_report(session, key_id=None, group_by="key")
        costs = sum(j.cost_usd for j in session.exec(select(Job)))
    assert {r["name"] for r in report["data"]} == {"a", "b"}
    assert report["total"]["cost_usd"] == costs and isinstance(costs, Decimal)


def test_from_and_to_filter_by_day(usage_setup):
    client, secret, _, _ = usage_setup
    today = utcnow().date()
    assert get(client, secret, **{"from": str(today), "to": str(today)})["total"]["jobs"] == 4
    tomorrow = today + timedelta(days=1)
    assert get(client, secret, **{"from": str(tomorrow)})["total"]["jobs"] == 0
    assert get(client, secret, to=str(today - timedelta(days=1)))["total"]["attempts"] == 0
    bad = client.get("/v1/usage", params={"from": "yesterday"}, headers=auth(secret))
    assert bad.status_code == 422 and "ISO" in bad.json()["detail"]
