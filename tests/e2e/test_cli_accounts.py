"""`genq keys create/list/revoke` and `genq usage`, run as an operator would."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.e2e.test_cli import genq
from tests.helpers import auth
from tests.integration.test_api_contract import run_all

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def test_keys_with_budgets_list_and_revoke(env, settings):
    created = genq(
        "keys", "create", "team-a", "--budget-usd", "12.50", "--period", "monthly", env=env
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "budget 12.5 USD (monthly)" in created.stderr
    listed = json.loads(genq("keys", "list", "--json", env=env).stdout)
    assert [(k["name"], k["budget_usd"], k["period"], k["revoked"]) for k in listed] == [
        ("team-a", "12.5", "monthly", False)
    ]
    assert secret not in json.dumps(listed)
    revoked = genq("keys", "revoke", listed[0]["prefix"], env=env)
    assert revoked.returncode == 0 and f"revoked key {listed[0]['id']}" in revoked.stdout
    assert json.loads(genq("keys", "list", "--json", env=env).stdout)[0]["revoked"] is True
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=auth(secret)).status_code == 401


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("keys", "create", "x", "--budget-usd", "lots"), "not a number"),
        (("keys", "create", "x", "--budget-usd", "-1"), "positive"),
        (("keys", "create", "x", "--period", "weekly"), "monthly or total"),
        (("keys", "revoke", "nope"), "no single key"),
        (("usage", "--group-by", "planet"), "--group-by"),
        (("usage", "--from", "yesterday"), "ISO"),
    ],
)
def test_account_errors_are_one_line(env, args, needle):
    result = genq(*args, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr


def test_usage_prints_a_table_and_json_matching_the_api(env, settings):
    secrets = [genq("keys", "create", name, env=env).stdout.strip() for name in ("a", "b")]
    with TestClient(create_app(settings)) as client:
        ids = [
            client.post("/v1/jobs", json={"kind": "text", "prompt": p}, headers=auth(s)).json()[
                "id"
            ]
            for p, s in (("x", secrets[0]), ("y", secrets[1]))
        ]
        run_all(settings, ids)
        api_total = sum(
            client.get("/v1/usage", headers=auth(s)).json()["total"]["cost_usd"] for s in secrets
        )
    report = json.loads(genq("usage", "--group-by", "key", "--json", env=env).stdout)
    assert {r["name"] for r in report["data"]} == {"a", "b"}
    assert report["total"]["cost_usd"] == pytest.approx(api_total) and report["total"]["jobs"] == 2
    table = genq("usage", "--group-by", "model", env=env)
    assert table.returncode == 0 and "gpt-4.1-mini" in table.stdout and "total" in table.stdout
