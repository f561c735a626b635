"""Fitting a conversation into a prompt budget: the system message, the newest turns, the new one.

Pure functions with no I/O. Turns are grouped into *exchanges* (a user message and everything
up to the next user message: the reply, an assistant's tool calls and the tool results that
answer them), and an exchange is kept or dropped whole, so a turn is never split and a tool
result never loses its call. Exchanges are kept newest first while they fit; the first one that
does not fit stops the walk, so what is sent is always the newest contiguous part.

Tokens are tiktoken counts of the messages exactly as the job sends them, per-message overhead
included (models/tokens.py); the prompt is counted whole once more at the end, and the count
recorded is that one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.errors import InvalidRequest
from models.tokens import TOKENS_PER_REPLY, count_messages

Message = dict[str, Any]
#: the prompt tokens of a whole request's messages, as the provider will receive them
Counter = Callable[[list[Message]], int]


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One stored message of a conversation, with its place in it."""

    index: int
    job_id: str
    message: Message
    #: its share of a prompt (tiktoken, with the per-message overhead)
    tokens: int


@dataclass(frozen=True, kw_only=True)
class Trimmed:
    messages: list[Message]
    sent: list[Turn]
    dropped: list[Turn]
    prompt_tokens: int
    budget_tokens: int
    turns_total: int = field(default=0)

    def record(self) -> dict[str, Any]:
        """The job's `context`."""
        return {
            "turns_total": self.turns_total,
            "turns_sent": len(self.sent),
            "dropped_turns": [
                {
                    "index": t.index,
                    "role": t.message["role"],
                    "job_id": t.job_id,
                    "tokens": t.tokens,
                }
                for t in self.dropped
            ],
            "prompt_tokens": self.prompt_tokens,
            "budget_tokens": self.budget_tokens,
        }


def message_tokens(message: Message, encoding_name: str) -> int:
    """What one message adds to a prompt."""
    return count_messages([message], encoding_name) - TOKENS_PER_REPLY


def exchanges(turns: list[Turn]) -> list[list[Turn]]:
    """Turns grouped so that each group starts at a user message (or the first turn)."""
    groups: list[list[Turn]] = []
    for turn in turns:
        if not groups or turn.message["role"] == "user":
            groups.append([turn])
        else:
            groups[-1].append(turn)
    return groups


def _too_large(base: int, budget: int, source: str, *, with_calls: bool) -> InvalidRequest:
    what = (
        "the system message, the tool calls and their results"
        if with_calls
        else ("the system message and the new message")
    )
    reason = (
        f"{what} are {base} prompt tokens; the conversation's context budget is {budget} "
        f"tokens ({source}); shorten the message or raise the budget"
    )
    return InvalidRequest(reason, errors=[{"loc": ["body", "content"], "msg": reason}])


def trim(
    *,
    system: list[Message],
    turns: list[Turn],
    new: list[Message],
    budget: int,
    count: Counter,
    source: str = "context_tokens",
    keep_last: bool = False,
) -> Trimmed:
    """The messages to send: `system`, the newest exchanges that fit `budget`, then `new`.

    `count` counts a whole request's prompt tokens; `keep_last`: the newest exchange must be
    sent (`new` answers its tool calls). Raises InvalidRequest (422, naming the budget and
    `source`, what set it) when what must be sent does not fit.
    """
    groups = exchanges(turns)
    kept = len(groups) - 1 if keep_last and groups else len(groups)
    base = count([*system, *(turn.message for group in groups[kept:] for turn in group), *new])
    if base > budget:
        raise _too_large(base, budget, source, with_calls=kept < len(groups))
    floor, used = kept, base
    for position in range(kept - 1, -1, -1):
        cost = sum(turn.tokens for turn in groups[position])
        if used + cost > budget:
            break
        used += cost
        kept = position
    while True:  # the stored counts are a guide; the whole prompt as sent is the measure
        sent = [turn for group in groups[kept:] for turn in group]
        messages = [*system, *(turn.message for turn in sent), *new]
        total = count(messages)
        if total <= budget or kept == floor:
            break
        kept += 1
    dropped = [turn for group in groups[:kept] for turn in group]
    return Trimmed(
        messages=messages,
        sent=sent,
        dropped=dropped,
        prompt_tokens=total,
        budget_tokens=budget,
        turns_total=len(turns),
    )
