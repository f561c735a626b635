"""`genq simulator`'s streamed chat completions (`"stream": true`), and the ways a stream breaks.

The answer is the one a plain call gets, sent as OpenAI sends it: a role chunk, one chunk per
word (the simulated latency spread over them), a chunk with the finish reason, a usage chunk
when `stream_options.include_usage` is set, then `data: [DONE]`. Tool calls come as OpenAI
sends them too: the id and name first, the arguments in fragments.

A scripted break (`POST /_simulator/script {"streams": [...]}`) spoils the next streams, half
way through the text: `disconnect` drops the connection, `truncate` ends the body cleanly but
early (no finish reason, no [DONE]), `malformed` sends a chunk that is not JSON, `stall` goes
silent for `STALL_S` seconds before going on; `ok` streams normally.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from worker.providers.simulator import Answer, text_pieces

StreamOutcome = Literal["ok", "disconnect", "truncate", "malformed", "stall"]
#: how long a `stall` break stays silent (longer than the stall timeout tests set)
STALL_S = 5.0


class Disconnect(Exception):
    """Raised inside the body: the server drops the connection mid-response."""


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _chunk(base: dict, delta: dict, finish: str | None = None) -> dict:
    return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _usage(answer: Answer) -> dict:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def _tool_deltas(answer: Answer) -> list[dict]:
    deltas = []
    for index, call in enumerate(answer.tool_calls or ()):
        head = {"index": index, "id": call["id"], "type": "function"}
        deltas.append({"tool_calls": [head | {"function": {"name": call["function"]["name"]}}]})
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 16):
            piece = {"index": index, "function": {"arguments": arguments[start : start + 16]}}
            deltas.append({"tool_calls": [piece]})
    return deltas


async def stream_answer(
    answer: Answer,
    *,
    model: str,
    latency_ms: int,
    include_usage: bool,
    outcome: StreamOutcome = "ok",
) -> AsyncIterator[bytes]:
    """The SSE body of one streamed chat completion (broken as `outcome` says)."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "genq-simulator",
    }
    deltas = [{"content": piece} for piece in text_pieces(answer.text)] + _tool_deltas(answer)
    pause = latency_ms / 1000 / max(len(deltas), 1)
    yield _sse(_chunk(base, {"role": "assistant", "content": ""}))
    for number, delta in enumerate(deltas):
        if number == len(deltas) // 2 and outcome != "ok":
            async for piece in _break(outcome):
                yield piece
            if outcome != "stall":
                return
        await asyncio.sleep(pause)
        yield _sse(_chunk(base, delta))
    yield _sse(_chunk(base, {}, answer.finish_reason))
    if include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(answer)})
    yield _sse("[DONE]")


async def _break(outcome: StreamOutcome) -> AsyncIterator[bytes]:
    if outcome == "disconnect":
        raise Disconnect("the simulator drops this stream (scripted)")
    if outcome == "malformed":
        yield b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "x\n\n'
    elif outcome == "stall":
        await asyncio.sleep(STALL_S)
