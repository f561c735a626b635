"""Folding a streamed chat completion (`chat.completion.chunk`s) back into one answer.

Text comes in `choices[0].delta.content`; tool calls come in pieces keyed by `index` (the id and
name first, the arguments in fragments); `finish_reason` comes once, and with
`stream_options.include_usage` a last chunk with no choices carries the usage. A stream that
ends without a finish reason was cut short: the caller treats it as broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.pricing import Usage


@dataclass
class _ToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def public(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


@dataclass
class ChunkFolder:
    """What the chunks said so far."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    calls: dict[int, _ToolCall] = field(default_factory=dict)

    def add(self, chunk) -> str:
        """Fold one chunk in; returns its new text (empty when it carried none)."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = _usage(chunk.usage)
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        for piece in getattr(delta, "tool_calls", None) or ():
            self._tool_piece(piece)
        text = getattr(delta, "content", None) or ""
        if text:
            self.text.append(text)
        return text

    def _tool_piece(self, piece) -> None:
        call = self.calls.setdefault(piece.index, _ToolCall())
        call.id = piece.id or call.id
        function = getattr(piece, "function", None)
        if function is not None:
            call.name = function.name or call.name
            if function.arguments:
                call.arguments.append(function.arguments)

    @property
    def full_text(self) -> str:
        return "".join(self.text)

    def tool_calls(self) -> list[dict] | None:
        return [self.calls[i].public() for i in sorted(self.calls)] or None


def _usage(usage) -> Usage:
    details = getattr(usage, "prompt_tokens_details", None)
    return Usage(
        prompt_tokens=usage.prompt_tokens or 0,
        cached_tokens=(getattr(details, "cached_tokens", 0) or 0) if details else 0,
        completion_tokens=usage.completion_tokens or 0,
    )
