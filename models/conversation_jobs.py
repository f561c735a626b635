"""From a conversation and a new message to the text job that answers it.

The job is an ordinary text request: the conversation's system message, as many of its newest
turns as fit the prompt budget, and the new message, with the conversation's model, policy and
params (the message's params over them). The budget is `context_tokens`, capped by the model's
context window minus the output allowance (`max_tokens`, else the model's output limit); without
`context_tokens`, that window alone. The model is the one the cost policy picks for the system
message and the new message; the trimmed request is planned again at submit as any job is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.catalogue import Catalogue, ModelSpec
from models.context import trim
from models.conversations import (
    Conversation,
    ConversationCreate,
    ConversationTurn,
    MessageCreate,
    as_context_turns,
    turn_message,
)
from models.errors import InvalidRequest
from models.planning import Defaults, plan_job
from models.schemas import JobCreate
from models.tokens import count_request


@dataclass(frozen=True, kw_only=True)
class NextJob:
    body: JobCreate
    #: the job's `context`: turns total, sent, dropped, prompt tokens, budget
    context: dict[str, Any]


def _request(
    conversation: Conversation, messages: list[dict[str, Any]], params: dict[str, Any]
) -> JobCreate:
    return JobCreate.model_validate(
        {
            "kind": "text",
            "messages": messages,
            "params": params,
            "model": conversation.model,
            "policy": conversation.policy,
            "metadata": conversation.meta or {},
        }
    )


def budget_for(
    conversation: Conversation, spec: ModelSpec, params: dict[str, Any]
) -> tuple[int, str]:
    """The prompt budget and, in words, what set it."""
    allowance = params.get("max_tokens") or spec.max_output_tokens or 0
    window = spec.context_window - allowance
    wanted = conversation.context_tokens
    if wanted is not None and wanted <= window:
        return wanted, "context_tokens"
    return window, (
        f"{spec.id}'s context window of {spec.context_window} minus {allowance} output tokens"
    )


def check_settings(body: ConversationCreate, *, catalogue: Catalogue, defaults: Defaults) -> None:
    """Refuse (422) a model, policy or params no message could be sent with."""
    probe = Conversation(
        system=body.system,
        model=body.model,
        params=body.params,
        policy=body.policy.model_dump(mode="json", exclude_none=True),
    )
    messages = [{"role": "system", "content": body.system}] if body.system else []
    plan_job(
        _request(probe, [*messages, {"role": "user", "content": "?"}], body.params),
        catalogue,
        defaults,
    )


def check_answers(rows: list[ConversationTurn], new: list[dict[str, Any]]) -> None:
    """Tool results answer exactly the calls of the last reply; a user message may not leave
    calls unanswered (OpenAI refuses both): else 422."""
    last = rows[-1] if rows else None
    pending = [call["id"] for call in (last.tool_calls or [])] if last else []
    answered = [m["tool_call_id"] for m in new if m["role"] == "tool"]
    if sorted(answered) == sorted(pending):
        return
    if not answered:
        reason = f"the last reply called tools ({', '.join(pending)}): send their tool_results"
        field = "content"
    else:
        expected = ", ".join(pending) or "none"
        reason = f"tool_results must answer the last reply's tool calls ({expected})"
        field = "tool_results"
    raise InvalidRequest(reason, errors=[{"loc": ["body", field], "msg": reason}])


def next_job(
    conversation: Conversation,
    rows: list[ConversationTurn],
    message: MessageCreate,
    *,
    catalogue: Catalogue,
    defaults: Defaults,
) -> NextJob:
    """The job request for `message`; InvalidRequest (422) when even the system message and
    the message do not fit the budget, or the policy refuses the request."""
    params = {**conversation.params, **message.params}
    system = [{"role": "system", "content": conversation.system}] if conversation.system else []
    new = message.messages()
    check_answers(rows, new)
    # tool results travel with the reply that called the tools: planned with it, never trimmed
    calls = [turn_message(rows[-1])] if new[0]["role"] == "tool" else []
    plan = plan_job(_request(conversation, [*system, *calls, *new], params), catalogue, defaults)
    spec = plan.spec
    budget, source = budget_for(conversation, spec, plan.params)
    trimmed = trim(
        system=system,
        turns=as_context_turns(rows, spec.encoding),
        new=new,
        budget=budget,
        count=lambda messages: count_request(messages, plan.params, spec.encoding),
        source=source,
        keep_last=bool(calls),
    )
    return NextJob(body=_request(conversation, trimmed.messages, params), context=trimmed.record())
