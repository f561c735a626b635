"""`genq keys create --webhook-url` and `genq keys webhook-secret`, run as an operator would."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from models.db import get_engine, session_scope
from models.keys import ApiKey
from tests.helpers import genq

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def stored_secret(database_url: str) -> str | None:
    with session_scope(get_engine(database_url)) as session:
        return session.exec(select(ApiKey.webhook_secret)).one()


def test_webhook_secrets_are_printed_alone_once_and_rotate(env, settings):
    # Given a key created with a default webhook URL (private addresses allowed here)
    allowed = {**env, "GENQ_WEBHOOK_ALLOW_PRIVATE": "true"}
    created = genq("keys", "create", "shop", "--webhook-url", "http://127.0.0.1:9/h", env=allowed)
    assert created.returncode == 0, created.stderr
    api_secret, whsec = created.stdout.splitlines()
    assert api_secret.startswith("genq_") and whsec.startswith("whsec_")
    assert stored_secret(settings.database_url) == whsec
    listed = json.loads(genq("keys", "list", "--json", env=env).stdout)[0]
    assert listed["webhook_url_host"] == "127.0.0.1" and listed["webhook_secret_set"] is True
    assert whsec not in json.dumps(listed)
    # When its secret is rotated, by the key's prefix
    rotated = genq("keys", "webhook-secret", listed["prefix"], env=env)
    # Then the new secret is alone on stdout, stored, and the old one is gone
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.count("\n") == 1 and rotated.stdout.startswith("whsec_")
    assert rotated.stdout.strip() == stored_secret(settings.database_url) != whsec
    assert "shown only once" in rotated.stderr


def test_a_private_default_url_and_an_unknown_key_are_one_line_refusals(env):
    refused = genq("keys", "create", "shop", "--webhook-url", "http://localhost/h", env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "is loopback" in refused.stderr
    unknown = genq("keys", "webhook-secret", "nope", env=env)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "no single key matches 'nope'" in unknown.stderr
