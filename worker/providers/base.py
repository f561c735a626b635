"""The one small interface every model provider implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from models.moderation import Verdict
from models.pricing import Usage
from models.schemas import ImageParams, TextParams
from models.text_rules import storable


@dataclass(frozen=True, kw_only=True)
class TextResult:
    text: str
    usage: Usage
    #: stop, length, tool_calls, content_filter (None when the provider did not say)
    finish_reason: str | None = None
    #: the functions the model called, as it returned them
    tool_calls: list[dict] | None = None
    #: the parsed answer, set once genq checked it against the asked JSON format
    json: Any = None

    def __post_init__(self) -> None:
        # a NUL cannot be stored in a text column on PostgreSQL (the job's end would fail,
        # and the job be run and billed again): the one rule of what a stored text holds
        object.__setattr__(self, "text", storable(self.text))

    def extra(self) -> dict | None:
        """What a text output holds beyond its text and finish reason, stored as it is."""
        data = {}
        if self.json is not None:
            data["json"] = self.json
        if self.tool_calls:
            data["tool_calls"] = self.tool_calls
        return data or None


@dataclass(frozen=True, kw_only=True)
class GeneratedImage:
    data: bytes
    #: None when the format does not say (an SVG without width/height or viewBox)
    width: int | None
    height: int | None
    content_type: str = "image/png"


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    images: list[GeneratedImage] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


#: called with each piece of text as the model streams it; may raise StreamStopped
OnDelta = Callable[[str], None]


class StreamStopped(Exception):
    """Raised by an OnDelta to end a stream early (the job was cancelled): the provider closes
    the stream and lets it through, with `usage` set to what the call is billed (the provider's
    report, else the prompt and the text so far, counted)."""

    usage: Usage | None = None


class Provider(Protocol):
    """Calls one model once. Raises RetryableProviderError or PermanentProviderError on failure."""

    name: str

    def generate_text(
        self, *, model: str, messages: list[dict], params: TextParams
    ) -> TextResult: ...

    def generate_text_stream(
        self, *, model: str, messages: list[dict], params: TextParams, on_delta: OnDelta
    ) -> TextResult:
        """The same call streamed: `on_delta` gets the text as it arrives, the result is the
        whole answer with the usage the provider reported. A stream that breaks (disconnect,
        cut short, malformed chunk, stall) raises RetryableProviderError `stream_broken`."""
        ...

    def generate_image(self, *, model: str, prompt: str, params: ImageParams) -> ImageResult: ...

    def moderate(self, *, model: str, texts: list[str]) -> Verdict:
        """One moderation call over `texts` (called only for jobs with moderation on)."""
        ...


def parse_size(size: str) -> tuple[int, int]:
    """`1024x1536` → (1024, 1536)."""
    width, _, height = size.partition("x")
    return int(width), int(height)
