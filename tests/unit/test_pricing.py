"""models/pricing.py: every catalogue price, checked against arithmetic written out by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.catalogue import load_catalogue
from models.pricing import Usage, cost_of, estimate_image, estimate_text

D = Decimal
M = D(1_000_000)
CATALOGUE = load_catalogue()

#: 1000 prompt tokens of which 200 cached, 500 completion tokens: cost written out per model
TEXT_COST = {
    "gpt-4o-mini": 800 * D("0.15") / M + 200 * D("0.075") / M + 500 * D("0.60") / M,
    "gpt-4o": 800 * D("2.50") / M + 200 * D("1.25") / M + 500 * D("10.00") / M,
    "gpt-4.1": 800 * D("2.00") / M + 200 * D("0.50") / M + 500 * D("8.00") / M,
    "gpt-4.1-mini": 800 * D("0.40") / M + 200 * D("0.10") / M + 500 * D("1.60") / M,
    "gpt-4.1-nano": 800 * D("0.10") / M + 200 * D("0.025") / M + 500 * D("0.40") / M,
}
#: the same sums as literal dollars, so a slip in the table above cannot hide a slip in the code
TEXT_COST_LITERAL = {
    "gpt-4o-mini": D("0.000435"),
    "gpt-4o": D("0.00725"),
    "gpt-4.1": D("0.0057"),
    "gpt-4.1-mini": D("0.00114"),
    "gpt-4.1-nano": D("0.000285"),
}
#: (model, quality, size) -> USD per image
IMAGE_PRICE = {
    ("dall-e-2", "standard", "256x256"): D("0.016"),
    ("dall-e-2", "standard", "512x512"): D("0.018"),
    ("dall-e-2", "standard", "1024x1024"): D("0.020"),
    ("dall-e-3", "standard", "1024x1024"): D("0.040"),
    ("dall-e-3", "standard", "1024x1792"): D("0.080"),
    ("dall-e-3", "standard", "1792x1024"): D("0.080"),
    ("dall-e-3", "hd", "1024x1024"): D("0.080"),
    ("dall-e-3", "hd", "1024x1792"): D("0.120"),
    ("dall-e-3", "hd", "1792x1024"): D("0.120"),
    ("gpt-image-1", "low", "1024x1024"): D("0.011"),
    ("gpt-image-1", "low", "1024x1536"): D("0.016"),
    ("gpt-image-1", "low", "1536x1024"): D("0.016"),
    ("gpt-image-1", "medium", "1024x1024"): D("0.042"),
    ("gpt-image-1", "medium", "1024x1536"): D("0.063"),
    ("gpt-image-1", "medium", "1536x1024"): D("0.063"),
    ("gpt-image-1", "high", "1024x1024"): D("0.167"),
    ("gpt-image-1", "high", "1024x1536"): D("0.25"),
    ("gpt-image-1", "high", "1536x1024"): D("0.25"),
}


def test_every_catalogue_entry_has_a_hand_written_price():
    # A model added to the catalogue without a row here makes this test fail
    text = {m.id for m in CATALOGUE if m.kind == "text"}
    images = {(m.id, q, s) for m in CATALOGUE for q, sizes in m.image_prices.items() for s in sizes}
    assert text == set(TEXT_COST) == set(TEXT_COST_LITERAL)
    assert images == set(IMAGE_PRICE)


@pytest.mark.parametrize("model_id", sorted(TEXT_COST))
def test_text_cost_is_exact(model_id):
    # Given 1000 prompt tokens (200 cached) and 500 completion tokens
    usage = Usage(prompt_tokens=1000, cached_tokens=200, completion_tokens=500)
    # When priced
    cost = cost_of(CATALOGUE.get(model_id), usage)
    # Then the Decimal result equals the hand sum exactly
    assert type(cost) is Decimal
    assert cost == TEXT_COST[model_id] == TEXT_COST_LITERAL[model_id]


@pytest.mark.parametrize("model_id", sorted(TEXT_COST))
def test_one_token_each_way_is_exact(model_id):
    spec = CATALOGUE.get(model_id)
    assert cost_of(spec, Usage(prompt_tokens=1)) == spec.input_per_1m / M
    assert cost_of(spec, Usage(completion_tokens=1)) == spec.output_per_1m / M
    assert cost_of(spec, Usage(prompt_tokens=1, cached_tokens=1)) == spec.cached_input_per_1m / M


def test_zero_usage_costs_nothing():
    assert cost_of(CATALOGUE.get("gpt-4o"), Usage()) == 0


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize(("model_id", "quality", "size"), sorted(IMAGE_PRICE))
def test_image_cost_by_size_and_quality(model_id, quality, size, n):
    # Without token usage an image bills its listed price; the estimate never falls below it,
    # and for token-billed gpt-image-1 it is the larger of the list price and the token count
    spec = CATALOGUE.get(model_id)
    listed = n * IMAGE_PRICE[model_id, quality, size]
    assert cost_of(spec, Usage(images=n, size=size, quality=quality)) == listed
    tokens = spec.image_tokens.get(quality, {}).get(size)
    by_tokens = n * tokens * spec.image_output_per_1m / M if tokens else D(0)
    assert estimate_image(spec, n=n, size=size, quality=quality) == max(listed, by_tokens)


@pytest.mark.parametrize(
    ("quality", "size", "tokens"),
    [("low", "1024x1024", 272), ("medium", "1024x1536", 1584), ("high", "1536x1024", 6208)],
)
def test_gpt_image_1_bills_its_reported_tokens(quality, size, tokens):
    # Given gpt-image-1 reporting 12 prompt tokens and `tokens` image tokens for one image
    spec = CATALOGUE.get("gpt-image-1")
    usage = Usage(prompt_tokens=12, completion_tokens=tokens, images=1, size=size, quality=quality)
    # Then text input bills at $5/1M and image output at $40/1M, exactly
    assert cost_of(spec, usage) == 12 * D("5.00") / M + tokens * D("40.00") / M


@pytest.mark.parametrize(
    ("model_id", "size", "expected"),
    [
        ("dall-e-2", "512x512", D("0.018")),
        ("dall-e-3", "1792x1024", D("0.080")),
        ("gpt-image-1", "1024x1024", 1056 * D(40) / M),  # default_quality medium: 1056 tokens
    ],
)
def test_image_without_quality_uses_the_default_quality(model_id, size, expected):
    spec = CATALOGUE.get(model_id)
    assert estimate_image(spec, n=1, size=size, quality=None) == expected


@pytest.mark.parametrize(
    ("model_id", "prompt_tokens", "max_tokens", "expected"),
    [
        # explicit max_tokens: whole prompt uncached plus every allowed output token
        ("gpt-4o-mini", 1000, 200, 1000 * D("0.15") / M + 200 * D("0.60") / M),
        ("gpt-4o", 12, 1, 12 * D("2.50") / M + 1 * D("10.00") / M),
        # no max_tokens: the model's max_output_tokens is the worst case
        ("gpt-4o-mini", 1000, None, 1000 * D("0.15") / M + 16_384 * D("0.60") / M),
        ("gpt-4.1-nano", 10, None, 10 * D("0.10") / M + 32_768 * D("0.40") / M),
        ("gpt-4.1", 0, None, 32_768 * D("8.00") / M),
    ],
)
def test_estimate_text(model_id, prompt_tokens, max_tokens, expected):
    spec = CATALOGUE.get(model_id)
    assert estimate_text(spec, prompt_tokens=prompt_tokens, max_tokens=max_tokens) == expected


def test_usage_total_tokens():
    assert Usage(prompt_tokens=7, cached_tokens=5, completion_tokens=3).total_tokens == 10
