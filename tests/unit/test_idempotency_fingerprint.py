"""The request fingerprint of an Idempotency-Key: one per validated request, whatever its
spelling; any change a job would see is another fingerprint."""

from __future__ import annotations

import pytest

from models.idempotency import request_fingerprint
from models.schemas import JobCreate

BASE = {"kind": "text", "prompt": "hi", "params": {"max_tokens": 20}}


def fp(body: dict) -> str:
    return request_fingerprint(JobCreate.model_validate(body))


@pytest.mark.parametrize(
    "same",
    [
        {"prompt": "hi", "kind": "text", "params": {"max_tokens": 20}},
        {**BASE, "model": None, "deadline_s": None, "messages": None},
        {**BASE, "params": {"max_tokens": 20.0, "temperature": None}},
        {**BASE, "policy": {}, "metadata": {}},
    ],
)
def test_spellings_of_one_request_share_a_fingerprint(same):
    assert fp(same) == fp(BASE)


@pytest.mark.parametrize(
    "other",
    [
        {**BASE, "prompt": "hi!"},
        {**BASE, "params": {"max_tokens": 21}},
        {**BASE, "params": {"max_tokens": 20, "temperature": 0}},
        {**BASE, "model": "gpt-4o-mini"},
        {**BASE, "policy": {"max_cost_usd": "0.01"}},
        {**BASE, "metadata": {"a": 1}},
        {**BASE, "deadline_s": 60},
        {
            "kind": "text",
            "messages": [{"role": "user", "content": "hi"}],
            "params": {"max_tokens": 20},
        },
    ],
)
def test_anything_else_is_another_fingerprint(other):
    assert fp(other) != fp(BASE)


def test_decimals_compare_by_value_and_a_batch_is_not_its_single_job():
    cheap = {**BASE, "policy": {"max_cost_usd": "0.010"}}
    assert fp(cheap) == fp({**BASE, "policy": {"max_cost_usd": "0.01"}})
    body = JobCreate.model_validate(BASE)
    assert request_fingerprint([body]) != request_fingerprint(body)
    assert request_fingerprint([body, body]) != request_fingerprint([body])
    assert len(request_fingerprint(body)) == 64
