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


def cost_of(spec: ModelSpec, usage: Usage) -> Decimal:
    """Exact USD for one call; cached prompt tokens bill at the cached-input price."""
    uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
    tokens = (
        uncached * spec.input_per_1m
        + usage.cached_tokens * spec.cached_input_per_1m
        + usage.completion_tokens * spec.output_per_1m
    ) / PER_MILLION
    if usage.images and usage.size:
        price = spec.image_price(usage.size, usage.quality)
        tokens += usage.images * (price or Decimal(0))
    return tokens


def estimate_text(spec: ModelSpec, *, prompt_tokens: int, max_tokens: int | None) -> Decimal:
    """Worst case for a text job: the whole prompt uncached plus every allowed output token."""
    completion = max_tokens or spec.max_output_tokens or 0
    return cost_of(spec, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion))


def estimate_image(spec: ModelSpec, *, n: int, size: str, quality: str | None) -> Decimal:
    """Image jobs bill a fixed price per image."""
    return cost_of(spec, Usage(images=n, size=size, quality=quality))
