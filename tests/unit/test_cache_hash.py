"""The response cache's canonical request hash: what makes two requests the same, as a table."""

from __future__ import annotations

import pytest

from models.cache import cache_ttl, request_hash

BASE = {
    "kind": "text",
    "messages": [{"role": "user", "content": "Write a haiku"}],
    "params": {"max_tokens": 50, "temperature": 0.5},
    "policy": {"tier": "balanced", "cache_ttl_s": 60},
}


def digest(request: dict, *, model: str = "gpt-4o-mini", kind: str = "text") -> str:
    return request_hash(kind=kind, model=model, request=request)


@pytest.mark.parametrize(
    "same",
    [
        {**BASE, "params": {"temperature": 0.5, "max_tokens": 50}},  # key order
        {**BASE, "params": {"max_tokens": 50.0, "temperature": 0.5}},  # 50.0 is 50
        {**BASE, "params": {**BASE["params"], "seed": None}},  # null is absent
        {**BASE, "messages": None, "prompt": "Write a haiku"},  # prompt = one user message
        {**BASE, "policy": {"tier": "premium", "max_cost_usd": "0.01"}},  # routing only
        {**BASE, "policy": {"cache_ttl_s": 5}},  # the TTL itself
        {**BASE, "deadline_s": 30},  # not part of the answer
    ],
    ids=["order", "float-int", "null", "prompt", "tier", "ttl", "deadline"],
)
def test_requests_that_ask_the_same_hash_the_same(same):
    request = {k: v for k, v in same.items() if v is not None}
    assert digest(request) == digest(BASE)


@pytest.mark.parametrize(
    ("change", "model"),
    [
        ({"params": {"max_tokens": 51, "temperature": 0.5}}, "gpt-4o-mini"),
        ({"params": {**BASE["params"], "seed": 1}}, "gpt-4o-mini"),
        ({"params": {**BASE["params"], "response_format": {"type": "json_object"}}}, "gpt-4o-mini"),
        ({"params": {**BASE["params"], "stop": ["\n"]}}, "gpt-4o-mini"),
        ({"messages": [{"role": "user", "content": "Write a haiku "}]}, "gpt-4o-mini"),
        ({"messages": [{"role": "system", "content": "Write a haiku"}]}, "gpt-4o-mini"),
        ({"policy": {"moderation": "block"}}, "gpt-4o-mini"),  # a policy that changes answers
        ({}, "gpt-4.1-nano"),  # the resolved model
    ],
    ids=["max_tokens", "seed", "response_format", "stop", "content", "role", "moderation", "model"],
)
def test_anything_that_changes_the_answer_changes_the_hash(change, model):
    assert digest({**BASE, **change}, model=model) != digest(BASE)


def test_the_kind_is_hashed():
    request = {"prompt": "a red fox", "params": {}}
    assert digest(request, kind="image", model="m") != digest(request, kind="text", model="m")


@pytest.mark.parametrize(
    ("policy", "default", "ttl"),
    [({}, 0, 0), ({}, 300, 300), ({"cache_ttl_s": 60}, 0, 60), ({"cache_ttl_s": 0}, 300, 0)],
)
def test_the_ttl_is_the_jobs_else_the_deployments(policy, default, ttl):
    assert cache_ttl({"policy": policy}, default) == ttl
