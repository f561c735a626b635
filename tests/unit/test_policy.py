"""The cost policy as tables: which model, why, and what to fall back to (models/policy.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.catalogue import load_catalogue
from models.errors import InvalidRequest
from models.planning import Defaults, plan_job
from models.policy import SIMPLE_MAX_TOKENS, SIMPLE_PROMPT_TOKENS, is_simple
from models.schemas import JobCreate

CATALOGUE = load_catalogue()
LONG = "Write a detailed product description for our spring collection. " * 40  # > 300 tokens


def plan(body: dict, tier: str = "balanced"):
    return plan_job(JobCreate.model_validate(body), CATALOGUE, Defaults(tier=tier))


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "simple"),
    [
        (10, 5, True),
        (SIMPLE_PROMPT_TOKENS, SIMPLE_MAX_TOKENS, True),
        (SIMPLE_PROMPT_TOKENS + 1, 5, False),
        (10, SIMPLE_MAX_TOKENS + 1, False),
        (10, None, False),  # no declared limit: the answer may be long
    ],
)
def test_simple_requests(prompt_tokens, max_tokens, simple):
    assert is_simple(kind="text", prompt_tokens=prompt_tokens, max_tokens=max_tokens) is simple
    assert is_simple(kind="image", prompt_tokens=prompt_tokens, max_tokens=max_tokens) is False


@pytest.mark.parametrize(
    ("body", "tier", "chosen"),
    [
        # the cheapest model of the tier, compared at the same output size
        ({"kind": "text", "prompt": LONG}, "economy", "gpt-4.1-nano"),
        ({"kind": "text", "prompt": LONG}, "balanced", "gpt-4.1-mini"),
        ({"kind": "text", "prompt": LONG}, "premium", "gpt-4.1"),
        # a simple request may go one tier lower, never two
        (
            {
                "kind": "text",
                "prompt": "Label: positive or negative? 'Great!'",
                "params": {"max_tokens": 2},
            },
            "premium",
            "gpt-4.1-mini",
        ),
        (
            {
                "kind": "text",
                "prompt": "Label: positive or negative? 'Great!'",
                "params": {"max_tokens": 2},
            },
            "balanced",
            "gpt-4.1-nano",
        ),
        ({"kind": "text", "prompt": LONG, "params": {"max_tokens": 2}}, "premium", "gpt-4.1"),
        # images: cheapest of the tier; a size the tier cannot make goes to a cheaper tier
        ({"kind": "image", "prompt": "fox"}, "economy", "dall-e-2"),
        ({"kind": "image", "prompt": "fox"}, "balanced", "gpt-image-1"),
        ({"kind": "image", "prompt": "fox"}, "premium", "dall-e-3"),
        ({"kind": "image", "prompt": "fox", "params": {"size": "256x256"}}, "balanced", "dall-e-2"),
    ],
)
def test_the_policy_picks(body, tier, chosen):
    result = plan(body, tier)
    assert result.spec.id == chosen and result.routing.chosen == chosen
    assert result.routing.mode == "policy"


def test_the_request_tier_overrides_the_default():
    result = plan({"kind": "text", "prompt": LONG, "policy": {"tier": "premium"}}, "economy")
    assert result.spec.id == "gpt-4.1" and result.routing.tier == "premium"


def test_the_ceiling_moves_the_choice_to_a_cheaper_tier():
    # Given premium, but a ceiling gpt-4.1 and gpt-4o cannot meet in the worst case
    body = {
        "kind": "text",
        "prompt": LONG,
        "params": {"max_tokens": 1000},
        "policy": {"tier": "premium", "max_cost_usd": "0.002"},
    }
    result = plan(body)
    # Then the cheapest balanced model is chosen, and the record says why the others were not
    record = result.routing.record()
    assert result.spec.id == "gpt-4.1-mini" and result.estimated_cost_usd <= Decimal("0.002")
    reasons = {c["model"]: c.get("rejected", "") for c in record["candidates"]}
    assert "over max_cost_usd 0.002" in reasons["gpt-4.1"]
    assert "over max_cost_usd 0.002" in reasons["gpt-4o"]
    assert reasons["gpt-4.1-mini"] == ""
    assert "not needed" in reasons["gpt-4.1-nano"]


def test_nothing_fits_names_the_cheapest_candidate_and_its_estimate():
    body = {
        "kind": "text",
        "prompt": LONG,
        "params": {"max_tokens": 1000},
        "policy": {"tier": "economy", "max_cost_usd": "0.00001"},
    }
    with pytest.raises(InvalidRequest) as info:
        plan(body)
    assert "the cheapest candidate, gpt-4.1-nano, would cost up to 0.000" in info.value.detail
    assert info.value.errors[0]["loc"] == ["body", "policy", "max_cost_usd"]


def test_an_explicit_model_keeps_the_ceiling():
    body = {"kind": "text", "prompt": LONG, "model": "gpt-4o", "policy": {"max_cost_usd": "0.001"}}
    with pytest.raises(InvalidRequest, match=r"on gpt-4o exceeds max_cost_usd 0\.001"):
        plan(body)


def test_routing_record_and_fallbacks():
    result = plan({"kind": "text", "prompt": LONG}, "premium")
    record = result.routing.record()
    assert record["mode"] == "policy" and record["chosen"] == "gpt-4.1"
    assert Decimal(record["estimate_usd"]) == result.estimated_cost_usd
    assert {c["model"] for c in record["candidates"]} == {
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
    }
    # nearest tier first, cheapest first; never a pricier tier
    assert record["fallbacks"] == ["gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o-mini"]
    economy = plan({"kind": "text", "prompt": LONG}, "economy").routing
    assert economy.fallbacks == ["gpt-4o-mini"]


def test_fallbacks_respect_the_ceiling():
    body = {
        "kind": "text",
        "prompt": LONG,
        "params": {"max_tokens": 1000},
        "policy": {"tier": "premium", "max_cost_usd": "0.011"},
    }
    fallbacks = plan(body).routing.fallbacks
    assert "gpt-4o" not in fallbacks and fallbacks[0] == "gpt-4.1-mini"
