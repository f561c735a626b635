"""The pure parts of streaming: event ids, delta batching, folding streamed chunks, the
simulator's pieces, the `stream` field, and the CLI's SSE reader."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import ValidationError

from cli.stream import parse_events
from models.job_events import ORIGIN, Position, decode, encode
from models.schemas import JobCreate
from worker.providers.simulator import text_pieces
from worker.providers.stream_chunks import ChunkFolder
from worker.streaming import FLUSH_CHARS, DeltaBatch


@pytest.mark.parametrize(
    ("header", "entry", "derived"),
    [
        (None, ORIGIN, 0),
        ("", ORIGIN, 0),
        ("1796128959345-0", "1796128959345-0", 0),
        ("1796128959345-3:7", "1796128959345-3", 7),
        ("not-an-id", ORIGIN, 0),
        ("12-3:x", ORIGIN, 0),
    ],
)
def test_last_event_id_is_parsed_or_starts_over(header, entry, derived):
    assert Position.parse(header) == Position(entry, derived)


def test_derived_ids_never_repeat_along_a_chain_of_reconnects():
    seen = []
    position = Position()
    for entry in ("1-0", None, None, "2-0", None):
        if entry:
            position = position.after(entry)
            seen.append(entry)
        else:
            position, event_id = position.next_derived()
            seen.append(event_id)
        position = Position.parse(seen[-1])  # the client reconnects after each event
    assert seen == ["1-0", "1-0:1", "1-0:2", "2-0", "2-0:1"]


def test_an_entry_round_trips():
    assert decode(encode("delta", {"text": "héllo\n"})) == ("delta", {"text": "héllo\n"})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deltas_are_batched_by_time_and_by_size():
    sent: list[str] = []
    clock = Clock()
    batch = DeltaBatch(sent.append, flush_s=0.05, clock=clock)
    batch.add("a")  # the first piece goes at once
    batch.add("b")
    batch.add("c")  # within 50 ms of the last batch: waits
    assert sent == ["a"]
    clock.now += 0.06
    batch.add("d")
    assert sent == ["a", "bcd"]
    batch.add("x" * FLUSH_CHARS)  # a full batch goes whatever the time
    assert sent[-1] == "x" * FLUSH_CHARS
    batch.add("tail")
    batch.flush()
    assert "".join(sent) == "abcd" + "x" * FLUSH_CHARS + "tail"


def test_a_held_batch_sends_nothing_and_keeps_the_text():
    sent: list[str] = []
    batch = DeltaBatch(sent.append, flush_s=0, hold=True)
    for piece in ("one", " two", "x" * FLUSH_CHARS):
        batch.add(piece)
    batch.flush()
    assert sent == [] and batch.held == "one two" + "x" * FLUSH_CHARS


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None):
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": choices,
            "usage": usage,
        }
    )


def test_streamed_chunks_fold_into_text_tool_calls_and_usage():
    folder = ChunkFolder()
    pieces = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({}, finish="tool_calls"),
        chunk(usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
    ]
    said = [folder.add(p) for p in pieces]
    assert "".join(said) == folder.full_text == "Hello"
    assert folder.finish_reason == "tool_calls"
    assert folder.tool_calls() == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert (folder.usage.prompt_tokens, folder.usage.completion_tokens) == (9, 4)


@pytest.mark.parametrize("text", ["", "a", " a b  c ", "[synthetic] x\ny  "])
def test_the_simulators_pieces_join_to_the_text(text):
    assert "".join(text_pieces(text)) == text


def test_stream_is_for_text_jobs():
    assert JobCreate(kind="text", prompt="hi", stream=True).stream is True
    with pytest.raises(ValidationError, match="`stream` is for text jobs"):
        JobCreate(kind="image", prompt="a fox", stream=True)
    # unset, it is not stored: plain jobs' requests stay as they were
    assert "stream" not in JobCreate(kind="text", prompt="hi").model_dump(exclude_none=True)


def test_the_cli_reads_server_sent_events():
    lines = [": ping", "id: 1-0", "event: delta", 'data: {"text": "a"}', "", "id: 1-0:1"]
    lines += ["event: done", "data: {", 'data: "id": "j"}', ""]
    events = list(parse_events(iter(lines)))
    assert [(e.event, e.id) for e in events] == [("delta", "1-0"), ("done", "1-0:1")]
    assert events[1].data == ["{", '"id": "j"}']
