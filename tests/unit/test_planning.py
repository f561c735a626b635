"""JobCreate (models/schemas.py) and plan_job (models/planning.py): checks and estimates."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from models.catalogue import load_catalogue
from models.errors import InvalidRequest
from models.planning import Defaults, plan_job
from models.schemas import JobCreate

D = Decimal
M = D(1_000_000)
#: economy: the tier whose cheapest models (gpt-4.1-nano, dall-e-2) these tables were written for
DEFAULTS = Defaults(tier="economy")

TINY = """
[models."tiny-text"]
kind = "text"
tier = "premium"
input_per_1m = 1.00
output_per_1m = 2.00
context_window = 50
max_output_tokens = 16

[models."tiny-image"]
kind = "image"
tier = "premium"
context_window = 10
[models."tiny-image".image_prices.standard]
"64x64" = 0.001
"""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalogue") / "tiny.toml"
    path.write_text(TINY)
    return load_catalogue(path)


def plan(catalogue, body: dict):
    return plan_job(JobCreate.model_validate(body), catalogue, DEFAULTS)


# -- schema-level rejections ------------------------------------------------------------------

SCHEMA_ERRORS = [
    ({"kind": "audio", "prompt": "hi"}, "kind"),
    ({"prompt": "hi"}, "kind"),
    ({"kind": "text", "messages": []}, "at least 1"),
    (
        {"kind": "text", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
        "exactly one",
    ),
    ({"kind": "text"}, "exactly one"),
    ({"kind": "text", "prompt": ""}, "at least 1"),
    ({"kind": "text", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"kind": "text", "messages": [{"role": "user", "content": ""}]}, "content"),
    ({"kind": "text", "messages": [{"role": "user", "content": "hi", "x": 1}]}, "x"),
    ({"kind": "image", "messages": [{"role": "user", "content": "a fox"}]}, "prompt"),
    ({"kind": "text", "prompt": "hi", "temperature": 0.2}, "temperature"),
    ({"kind": "text", "prompt": "hi", "policy": {"max_cost_usd": 0}}, "max_cost_usd"),
    ({"kind": "text", "prompt": "hi", "policy": {"max_cost_usd": -1}}, "max_cost_usd"),
    ({"kind": "text", "prompt": "hi", "policy": {"tier": "free"}}, "tier"),
    ({"kind": "text", "prompt": "hi", "metadata": {f"k{i}": i for i in range(33)}}, "32 keys"),
]


@pytest.mark.parametrize(("body", "reason"), SCHEMA_ERRORS)
def test_schema_rejects(body, reason):
    # Given a body that breaks the request schema
    # When it is validated
    with pytest.raises(ValidationError) as info:
        JobCreate.model_validate(body)
    # Then pydantic names the reason
    assert reason in str(info.value)


def test_prompt_is_one_user_message():
    request = JobCreate.model_validate({"kind": "text", "prompt": "Write a haiku"})
    assert request.chat_messages() == [{"role": "user", "content": "Write a haiku"}]


def test_metadata_at_the_limit_is_accepted():
    body = {"kind": "text", "prompt": "hi", "metadata": {f"k{i}": i for i in range(32)}}
    assert len(JobCreate.model_validate(body).metadata) == 32


# -- plan-level rejections --------------------------------------------------------------------

LONG_TEXT = " ".join(["word"] * 60)  # 60 tokens: more than tiny-text's 50-token window

PLAN_ERRORS = [
    (
        {"kind": "text", "prompt": "hi", "model": "gpt-5-ultra"},
        "model",
        "unknown model 'gpt-5-ultra'",
    ),
    ({"kind": "image", "prompt": "fox", "model": "gpt-4o-mini"}, "model", "makes text, not image"),
    ({"kind": "text", "prompt": "hi", "model": "dall-e-3"}, "model", "makes image, not text"),
    (
        {"kind": "image", "prompt": "fox", "model": "dall-e-3", "params": {"size": "256x256"}},
        "params.size",
        "size '256x256' is not supported by dall-e-3",
    ),
    (
        {"kind": "image", "prompt": "fox", "params": {"size": "1000x1000"}},
        "params.size",
        "not supported by dall-e-2",
    ),
    (
        {"kind": "image", "prompt": "fox", "model": "dall-e-3", "params": {"n": 2}},
        "params.n",
        "between 1 and 1 for dall-e-3",
    ),
    ({"kind": "image", "prompt": "fox", "params": {"n": 11}}, "params.n", "between 1 and 10"),
    ({"kind": "image", "prompt": "fox", "params": {"n": 0}}, "params.n", "params.n"),
    (
        {"kind": "image", "prompt": "fox", "model": "dall-e-3", "params": {"quality": "ultra"}},
        "params.quality",
        "dall-e-3 offers quality standard/hd",
    ),
    ({"kind": "image", "prompt": "fox", "params": {"quality": "hd"}}, "params.quality", "quality"),
    (
        {"kind": "image", "prompt": "fox", "params": {"style": "vivid"}},
        "params.style",
        "params.style",
    ),
    (
        {"kind": "image", "prompt": "x" * 1001},
        "prompt",
        "prompt is 1001 characters; dall-e-2 accepts 1000",
    ),
    (
        {"kind": "text", "prompt": LONG_TEXT, "model": "tiny-text"},
        "messages",
        "context window of 50",
    ),
    (
        {"kind": "text", "prompt": "hi", "model": "tiny-text", "params": {"max_tokens": 17}},
        "params.max_tokens",
        "max_tokens 17 exceeds tiny-text's limit of 16",
    ),
    (
        {"kind": "text", "prompt": "hi", "params": {"max_tokens": 32_769}},
        "params.max_tokens",
        "exceeds gpt-4.1-nano's limit of 32768",
    ),
    ({"kind": "text", "prompt": "hi", "params": {"max_tokens": 0}}, "params.max_tokens", "params"),
    (
        {"kind": "text", "prompt": "hi", "params": {"temperature": 3}},
        "params.temperature",
        "params.temperature",
    ),
    (
        {"kind": "text", "prompt": "hi", "params": {"size": "1024x1024"}},
        "params.size",
        "params.size",
    ),
    (
        {"kind": "text", "prompt": "hi", "policy": {"max_cost_usd": "0.0001"}},
        "policy.max_cost_usd",
        "no economy model fits max_cost_usd 0.0001: the cheapest candidate, gpt-4o-mini",
    ),
    (
        {
            "kind": "image",
            "prompt": "fox",
            "model": "dall-e-3",
            "policy": {"max_cost_usd": "0.039"},
        },
        "policy.max_cost_usd",
        "worst-case cost 0.04 USD on dall-e-3",
    ),
]


@pytest.mark.parametrize(("body", "field", "reason"), PLAN_ERRORS)
def test_plan_rejects_with_reason(catalogue, body, field, reason):
    # Given a schema-valid request the chosen model cannot serve
    # When it is planned
    with pytest.raises(InvalidRequest) as info:
        plan(catalogue, body)
    # Then the 422 names the field and says why
    error = info.value
    assert error.status == 422
    assert reason in error.detail
    assert error.errors[0]["loc"] == ["body", *field.split(".")]


def test_prompt_plus_max_tokens_over_the_window_is_rejected(catalogue):
    # Given a prompt that fits tiny-text's window alone but not with max_tokens
    prompt = " ".join(["word"] * 30)  # 30 + 3 + 3 + 1 = 37 prompt tokens
    body = {"kind": "text", "prompt": prompt, "model": "tiny-text", "params": {"max_tokens": 14}}
    # When planned
    with pytest.raises(InvalidRequest, match="prompt is 37 tokens"):
        plan(catalogue, body)
    # Then with fewer output tokens it fits
    body["params"]["max_tokens"] = 13
    assert plan(catalogue, body).prompt_tokens == 37


# -- accepted requests ------------------------------------------------------------------------

HAIKU_TOKENS = 11  # 3 reply priming + 3 per message + "user" (1) + "Write a haiku" (4)

PLANS = [
    (
        {"kind": "text", "prompt": "Write a haiku"},
        "gpt-4.1-nano",
        HAIKU_TOKENS,
        11 * D("0.10") / M + 32_768 * D("0.40") / M,
    ),
    (
        {
            "kind": "text",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Write a haiku"},
            ],
            "model": "gpt-4o-mini",
            "params": {"max_tokens": 200, "temperature": 0.7},
            "policy": {"tier": "economy", "max_cost_usd": 0.01},
        },
        "gpt-4o-mini",
        19,
        19 * D("0.15") / M + 200 * D("0.60") / M,
    ),
    (
        {"kind": "text", "prompt": "Write a haiku", "model": "gpt-4o", "params": {"max_tokens": 1}},
        "gpt-4o",
        HAIKU_TOKENS,
        11 * D("2.50") / M + 1 * D("10.00") / M,
    ),
    ({"kind": "image", "prompt": "a red fox"}, "dall-e-2", 0, D("0.020")),
    (
        {"kind": "image", "prompt": "a red fox", "params": {"size": "256x256", "n": 10}},
        "dall-e-2",
        0,
        10 * D("0.016"),
    ),
    (
        {
            "kind": "image",
            "prompt": "a red fox",
            "model": "dall-e-3",
            "params": {"size": "1792x1024", "quality": "hd"},
        },
        "dall-e-3",
        0,
        D("0.120"),
    ),
    (
        {
            "kind": "image",
            "prompt": "a red fox",
            "model": "gpt-image-1",
            "params": {"size": "1024x1536", "quality": "medium", "n": 3},
        },
        "gpt-image-1",
        0,
        3 * 1584 * D(40) / M + 3 * D(5) / M,  # token-billed: 3 images of 1584 tokens + prompt
    ),
    ({"kind": "image", "prompt": "x" * 1000}, "dall-e-2", 0, D("0.020")),
]


@pytest.mark.parametrize(("body", "model_id", "prompt_tokens", "estimate"), PLANS)
def test_plan_accepts(catalogue, body, model_id, prompt_tokens, estimate):
    # Given a valid request
    # When planned
    result = plan(catalogue, body)
    # Then the model, prompt size and exact worst-case estimate are as written out here
    assert result.spec.id == model_id
    assert result.prompt_tokens == prompt_tokens
    assert result.estimated_cost_usd == estimate


def test_ceiling_equal_to_the_estimate_is_accepted(catalogue):
    body = {
        "kind": "image",
        "prompt": "fox",
        "model": "dall-e-3",
        "policy": {"max_cost_usd": "0.04"},
    }
    assert plan(catalogue, body).estimated_cost_usd == D("0.04")


def test_unknown_model_lists_the_models_of_that_kind(catalogue):
    with pytest.raises(InvalidRequest) as info:
        plan(catalogue, {"kind": "image", "prompt": "fox", "model": "nope"})
    assert info.value.detail.endswith("image models: dall-e-2, dall-e-3, gpt-image-1, tiny-image")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"kind": "image", "prompt": "fox", "model": "gpt-image-1"}, "gpt-image-1"),
        ({"kind": "text", "prompt": "hi", "model": "tiny-text"}, "tiny-text"),
        (
            {"kind": "text", "prompt": "hi", "model": "gpt-4o", "policy": {"tier": "economy"}},
            "gpt-4o",
        ),
    ],
)
def test_an_explicit_model_skips_the_choice(catalogue, body, expected):
    result = plan(catalogue, body)
    assert result.spec.id == expected and result.routing.mode == "explicit"
    assert result.routing.fallbacks == []


@pytest.mark.parametrize(
    ("body", "quality", "estimate"),
    [
        (
            {"kind": "image", "prompt": "fox", "model": "gpt-image-1"},
            "medium",
            1056 * Decimal(40) / M + Decimal(5) / M,  # 1056 image tokens + 1 prompt token
        ),
        (
            {
                "kind": "image",
                "prompt": "fox",
                "model": "gpt-image-1",
                "params": {"quality": "high"},
            },
            "high",
            Decimal("0.167"),
        ),
        ({"kind": "image", "prompt": "fox", "model": "dall-e-3"}, "standard", Decimal("0.040")),
    ],
)
def test_image_plan_makes_the_billed_quality_explicit(catalogue, body, quality, estimate):
    # The provider is asked for exactly the quality genq prices, never the provider's own default
    result = plan(catalogue, body)
    assert result.params["quality"] == quality and result.estimated_cost_usd == estimate
