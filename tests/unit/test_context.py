"""models/context.py: which turns of a conversation a prompt budget keeps, as tables."""

from __future__ import annotations

import pytest

from models.context import Turn, exchanges, message_tokens, trim
from models.errors import InvalidRequest
from models.tokens import count_messages


def words(messages: list[dict]) -> int:
    """A readable stand-in for tiktoken: 1 per request, 1 per message, 1 per word."""
    return 1 + sum(1 + len((m.get("content") or "").split()) for m in messages)


def call(call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def turns_of(*messages: dict) -> list[Turn]:
    """Turns numbered in order; job j{n} sent each user message and what follows it."""
    turns, job = [], 0
    for index, message in enumerate(messages):
        job += message["role"] == "user"
        turns.append(
            Turn(index=index, job_id=f"j{job}", message=message, tokens=words([message]) - 1)
        )
    return turns


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = [{"role": "system", "content": "be brief"}]  # 3 tokens with the request's 1
NEW = [user("and now")]  # 3 tokens
HISTORY = turns_of(
    user("one"),  # exchange 0: 2 + 2
    assistant("uno"),
    user("two two"),  # exchange 1: 3 + 3
    assistant("dos dos"),
    user("three"),  # exchange 2: 2, a tool round of 1 + 3, then 2
    {"role": "assistant", "content": None, "tool_calls": [call("c1")]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny today"},
    assistant("tres"),
)


@pytest.mark.parametrize(
    ("budget", "sent", "dropped"),
    [
        (7, [], [0, 1, 2, 3, 4, 5, 6, 7]),  # system + new only
        (14, [], [0, 1, 2, 3, 4, 5, 6, 7]),  # the tool exchange (8) is one unit: all or none
        (15, [4, 5, 6, 7], [0, 1, 2, 3]),
        (20, [4, 5, 6, 7], [0, 1, 2, 3]),  # exchange 1 (6) does not fit; exchange 0 (4) would,
        (21, [2, 3, 4, 5, 6, 7], [0, 1]),  # but only the newest contiguous turns are sent
        (25, [0, 1, 2, 3, 4, 5, 6, 7], []),
    ],
)
def test_the_newest_whole_exchanges_that_fit_are_kept(budget, sent, dropped):
    trimmed = trim(system=SYSTEM, turns=HISTORY, new=NEW, budget=budget, count=words)
    assert [t.index for t in trimmed.sent] == sent
    assert [t.index for t in trimmed.dropped] == dropped
    assert trimmed.messages == [*SYSTEM, *(HISTORY[i].message for i in sent), *NEW]
    assert trimmed.prompt_tokens == words(trimmed.messages) <= budget
    record = trimmed.record()
    assert record["turns_total"] == 8 and record["turns_sent"] == len(sent)
    assert [d["index"] for d in record["dropped_turns"]] == dropped


def test_a_tool_result_is_never_sent_without_its_call():
    for budget in range(7, 26):
        sent = trim(system=SYSTEM, turns=HISTORY, new=NEW, budget=budget, count=words).sent
        roles = [t.message["role"] for t in sent]
        assert "tool" not in roles or roles.index("tool") > 0
        assert not sent or sent[0].message["role"] == "user"


def test_exchanges_start_at_user_messages():
    groups = exchanges(HISTORY)
    assert [[t.index for t in group] for group in groups] == [[0, 1], [2, 3], [4, 5, 6, 7]]


def test_without_a_system_message_or_history():
    trimmed = trim(system=[], turns=[], new=NEW, budget=4, count=words)
    assert trimmed.messages == NEW and trimmed.dropped == [] and trimmed.prompt_tokens == 4


def test_system_and_new_message_over_the_budget_is_refused_naming_it():
    with pytest.raises(InvalidRequest) as refused:
        trim(system=SYSTEM, turns=HISTORY, new=NEW, budget=6, count=words, source="context_tokens")
    assert "are 7 prompt tokens" in refused.value.detail
    assert "context budget is 6 tokens (context_tokens)" in refused.value.detail


def test_stored_counts_too_low_are_corrected_by_counting_the_prompt_as_sent():
    # Given turns whose stored counts say 0 tokens, When trimmed, Then the whole prompt's
    # real count decides, dropping the oldest exchanges until it fits
    cheap = [Turn(index=t.index, job_id=t.job_id, message=t.message, tokens=0) for t in HISTORY]
    trimmed = trim(system=SYSTEM, turns=cheap, new=NEW, budget=18, count=words)
    assert [t.index for t in trimmed.sent] == [4, 5, 6, 7]
    assert trimmed.prompt_tokens == 15


def test_tiktoken_counts_add_up_to_the_prompt_as_sent():
    history = [
        Turn(index=i, job_id="j", message=m, tokens=message_tokens(m, "o200k_base"))
        for i, m in enumerate([user("Write a tagline for tulips"), assistant("Bloom bold.")])
    ]
    trimmed = trim(system=SYSTEM, turns=history, new=NEW, budget=10_000, count=count_messages)
    assert trimmed.prompt_tokens == count_messages(trimmed.messages)
    assert trimmed.prompt_tokens == count_messages([*SYSTEM, *NEW]) + sum(t.tokens for t in history)
