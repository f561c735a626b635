"""Moderation with real processes: `genq keys create --moderation`, `genq api`, `genq worker`
with the offline stand-in (GENQ_OFFLINE_FLAGGED_WORDS), `genq usage` — the README example."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import auth, genq, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def finished(api: str, secret: str, job_id: str) -> dict | None:
    job = httpx.get(f"{api}/v1/jobs/{job_id}", headers=auth(secret)).json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def test_a_key_that_blocks_and_a_job_that_only_flags(stack, env):
    # Given the README's setup: a worker whose stand-in flags "kill", a key that blocks
    stack.env["GENQ_OFFLINE_FLAGGED_WORDS"] = "kill:violence"
    api = stack.api()
    stack.worker()
    created = genq("keys", "create", "safe", "--moderation", "block", env=stack.env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "moderation block" in created.stderr
    listed = json.loads(genq("keys", "list", "--json", env=stack.env).stdout)
    assert [k["moderation"] for k in listed] == ["block"]
    # When two jobs with a flagged word run: one with the key's default, one asking for flag
    submitted = {
        mode: httpx.post(
            f"{api}/v1/jobs",
            json={"kind": "text", "prompt": "kill the lights", "policy": policy},
            headers=auth(secret),
        ).json()["id"]
        for mode, policy in (("block", {}), ("flag", {"moderation": "flag"}))
    }
    jobs = {
        mode: wait_until(lambda j=job_id: finished(api, secret, j), what=f"the {mode} job")
        for mode, job_id in submitted.items()
    }
    # Then the key's default blocked the first before any call, and the second finished
    blocked, flagged = jobs["block"], jobs["flag"]
    assert blocked["status"] == "failed" and blocked["error"]["type"] == "moderation_blocked"
    assert blocked["attempts"] == 0 and blocked["cost_usd"] == 0
    assert blocked["moderation"]["input"]["categories"] == ["violence"]
    assert flagged["status"] == "succeeded" and flagged["output"]["text"]
    assert flagged["moderation"]["input"]["flagged"] is True
    assert flagged["moderation"]["output"]["flagged"] is False
    # and the usage reports count the blocked job
    report = httpx.get(f"{api}/v1/usage", headers=auth(secret)).json()
    assert report["total"]["moderation_blocked"] == 1
    usage = json.loads(genq("usage", "--json", env=stack.env).stdout)
    assert usage["total"]["moderation_blocked"] == 1

    # and `genq submit --moderation` asks for a mode (the key's default is overridden)
    client_env = {**stack.env, "GENQ_API_URL": api, "GENQ_API_KEY": secret}
    flagged = genq("submit", "kill the lights", "--moderation", "flag", "--wait", env=client_env)
    assert flagged.returncode == 0, flagged.stderr
    verdicts = json.loads(flagged.stdout)["moderation"]  # piped: the job as JSON
    assert verdicts["input"]["categories"] == ["violence"] and not verdicts["output"]["flagged"]
    refused = genq("submit", "hi", "--moderation", "strict", env=client_env)
    assert refused.returncode == 1 and "moderation" in refused.stderr


def test_keys_create_refuses_an_unknown_mode(env):
    result = genq("keys", "create", "x", "--moderation", "strict", env=env)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "off, flag or block" in result.stderr
