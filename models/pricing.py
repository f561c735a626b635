"""Cost arithmetic: usage times catalogue prices, in `Decimal` only."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from models.catalogue import PER_MILLION, ModelSpec


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What one provider call consumed, as the provider reported it."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    size: str | None = None
    quality: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _input_cost(spec: ModelSpec, usage: Usage) -> Decimal:
    uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
    return (uncached * spec.input_per_1m + usage.cached_tokens * spec.cached_input_per_1m) / (
        PER_MILLION
    )


def cost_of(spec: ModelSpec, usage: Usage) -> Decimal:
    """Exact USD for one call; cached prompt tokens bill at the cached-input price.

    Image models that report token usage (gpt-image-1) bill those tokens; others bill the
    per-image price of the size and quality.
    """
    if spec.kind == "text":
        return _input_cost(spec, usage) + usage.completion_tokens * spec.output_per_1m / PER_MILLION
    if spec.image_output_per_1m and usage.completion_tokens:
        output = usage.completion_tokens * spec.image_output_per_1m / PER_MILLION
        return _input_cost(spec, usage) + output
    price = spec.image_price(usage.size, usage.quality) if usage.size else None
    return usage.images * (price or Decimal(0))


def estimate_text(spec: ModelSpec, *, prompt_tokens: int, max_tokens: int | None) -> Decimal:
    """Worst case for a text job: the whole prompt uncached plus every allowed output token."""
    completion = max_tokens or spec.max_output_tokens or 0
    return cost_of(spec, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion))


def estimate_image(
    spec: ModelSpec, *, n: int, size: str, quality: str | None, prompt_tokens: int = 0
) -> Decimal:
    """Per-image price, or for token-billed models the prompt plus the images' output tokens."""
    per_image = spec.image_token_count(size, quality)
    if spec.image_output_per_1m and per_image:
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=n * per_image)
        listed = cost_of(spec, Usage(images=n, size=size, quality=quality))
        return max(cost_of(spec, usage), listed)
    return cost_of(spec, Usage(images=n, size=size, quality=quality))
