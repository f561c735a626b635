"""The one small interface every model provider implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from models.pricing import Usage
from models.schemas import ImageParams, TextParams


@dataclass(frozen=True, kw_only=True)
class TextResult:
    text: str
    usage: Usage


@dataclass(frozen=True, kw_only=True)
class GeneratedImage:
    data: bytes
    width: int
    height: int
    content_type: str = "image/png"


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    images: list[GeneratedImage] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


class Provider(Protocol):
    """Calls one model once. Raises RetryableProviderError or PermanentProviderError on failure."""

    name: str

    def generate_text(
        self, *, model: str, messages: list[dict[str, str]], params: TextParams
    ) -> TextResult: ...

    def generate_image(self, *, model: str, prompt: str, params: ImageParams) -> ImageResult: ...


def parse_size(size: str) -> tuple[int, int]:
    """`1024x1536` → (1024, 1536)."""
    width, _, height = size.partition("x")
    return int(width), int(height)
