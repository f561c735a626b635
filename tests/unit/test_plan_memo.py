"""plan_job's memo (one per batch): the same plans as without it, for every request shape."""

from __future__ import annotations

import itertools

import pytest

from models.catalogue import get_catalogue
from models.errors import InvalidRequest
from models.planning import MEMO_SIZE, Defaults, plan_job
from models.schemas import JobCreate

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
PROMPTS = ["Say hi", "Say hello there", "Write one line about foxes " * 40, "Say hi"]
PARAMS = [{}, {"max_tokens": 10}, {"max_tokens": 800, "temperature": 0.2}, {"tools": [TOOL]},
          {"response_format": SCHEMA, "max_tokens": 50}]  # fmt: skip
HEADS = [{}, {"policy": {"tier": "economy"}}, {"policy": {"tier": "premium"}},
         {"model": "gpt-4.1-nano"}, {"policy": {"max_cost_usd": "0.00001"}}]  # fmt: skip


def _requests() -> list[JobCreate]:
    shapes = itertools.product(PROMPTS, PARAMS, HEADS)
    return [
        JobCreate.model_validate({"kind": "text", "prompt": p, "params": params, **head})
        for p, params, head in shapes
    ]


def _plan(request: JobCreate, memo: dict | None):
    try:
        return plan_job(request, get_catalogue(None), Defaults(), memo)
    except InvalidRequest as exc:
        return ("refused", exc.detail)


@pytest.mark.parametrize("rounds", [1, 2])
def test_a_memo_changes_no_plan(rounds):
    memo: dict = {}
    requests = _requests() * rounds
    assert [_plan(r, memo) for r in requests] == [_plan(r, None) for r in requests]
    assert 0 < len(memo) < len(requests)  # repeated shapes were planned once


def test_a_full_memo_starts_again():
    memo = {("k", i): None for i in range(MEMO_SIZE)}
    request = JobCreate.model_validate({"kind": "text", "prompt": "x"})
    assert _plan(request, memo) == _plan(request, None)
    assert len(memo) == 1


def test_image_plans_are_not_memoised():
    memo: dict = {}
    request = JobCreate.model_validate({"kind": "image", "prompt": "a fox"})
    assert _plan(request, memo) == _plan(request, None) and memo == {}
