"""Conversations: the tables, their API shapes, and the functions that keep one turn at a time.

A conversation remembers its `last_job_id`. A message is accepted only while that job is
finished, and accepting it moves `last_job_id` to the new job with one conditional UPDATE
(compare-and-set on the id the request read), so two messages posted at once cannot both be
accepted: PostgreSQL re-checks the condition after the first commits, SQLite serialises writes.
Turns are written only when a job succeeds, in the transaction that ends it (`add_exchange`):
the user's message and the reply together, so a failed or cancelled job adds neither.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    bindparam,
    func,
    insert,
    update,
)
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from models.context import Turn, message_tokens
from models.db import Money, db_moment, utcnow
from models.errors import Conflict, ConversationNotFound, JobNotFound
from models.jobs import FINISHED, Job, aware, decode_cursor
from models.jsontext import MoneyNumber
from models.keys import ApiKey  # noqa: F401  (the table conversations.key_id points at)
from models.lifecycle import cancel_job
from models.schemas import MAX_METADATA_KEYS, Policy, UsagePublic
from models.text_rules import StorableText


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_key_created", "key_id", "created_at", "id"),)

    id: str = SQLField(default_factory=lambda: uuid.uuid4().hex, primary_key=True, max_length=32)
    key_id: str = SQLField(foreign_key="api_keys.id", max_length=32)
    system: str | None = SQLField(default=None, sa_column=Column(Text))
    model: str | None = SQLField(default=None, max_length=100)
    policy: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    params: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: the prompt budget of each job; None: the model's context window minus the output allowance
    context_tokens: int | None = None
    meta: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column("metadata", JSON))
    #: the job of the latest accepted message: a new one waits until it has finished
    last_job_id: str | None = SQLField(default=None, max_length=32)
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=DateTime(timezone=True))


class ConversationTurn(SQLModel, table=True):
    """One message of a conversation, stored when the job that sent or answered it succeeded."""

    __tablename__ = "conversation_turns"

    id: int | None = SQLField(default=None, primary_key=True)
    conversation_id: str = SQLField(
        sa_column=Column(
            String(32),
            ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    job_id: str = SQLField(max_length=32)
    role: str = SQLField(max_length=16)
    content: str | None = SQLField(default=None, sa_column=Column(Text))
    #: an assistant's function calls, and the call a `tool` message answers
    tool_calls: list[dict[str, Any]] | None = SQLField(default=None, sa_column=Column(JSON))
    tool_call_id: str | None = SQLField(default=None, max_length=200)
    #: its share of a prompt, counted with `encoding` (tiktoken, per-message overhead included)
    tokens: int = 0
    encoding: str = SQLField(default="o200k_base", max_length=32)
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=DateTime(timezone=True))


class ConversationCreate(BaseModel):
    """Body of `POST /v1/conversations`: what every message's job starts from."""

    model_config = ConfigDict(extra="forbid")

    system: StorableText | None = Field(default=None, min_length=1)
    model: str | None = None
    policy: Policy = Field(default_factory=Policy)
    params: dict[str, Any] = Field(default_factory=dict)
    context_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _small_metadata(self) -> ConversationCreate:
        if len(self.metadata) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata holds at most {MAX_METADATA_KEYS} keys")
        return self


class ToolResult(BaseModel):
    """The answer to one tool call of the conversation's last reply."""

    model_config = ConfigDict(extra="forbid")

    tool_call_id: StorableText = Field(min_length=1, max_length=200)
    content: StorableText = Field(min_length=1)


class MessageCreate(BaseModel):
    """Body of `POST /v1/conversations/{id}/messages`: a user message (`content`), or the
    results of the tool calls the last reply made; `params` override the conversation's."""

    model_config = ConfigDict(extra="forbid")

    content: StorableText | None = Field(default=None, min_length=1)
    tool_results: list[ToolResult] | None = Field(default=None, min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> MessageCreate:
        if (self.content is None) == (self.tool_results is None):
            raise ValueError("give exactly one of `content` or `tool_results`")
        return self

    def messages(self) -> list[dict[str, Any]]:
        """What this message adds to the conversation, as chat messages."""
        if self.tool_results is None:
            return [{"role": "user", "content": self.content}]
        return [
            {"role": "tool", "tool_call_id": r.tool_call_id, "content": r.content}
            for r in self.tool_results
        ]


class TurnPublic(BaseModel):
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    job_id: str
    tokens: int
    created_at: str


class ConversationPublic(BaseModel):
    id: str
    system: str | None
    model: str | None
    policy: dict[str, Any]
    params: dict[str, Any]
    context_tokens: int | None
    metadata: dict[str, Any]
    #: the stored turns, oldest first (GET /v1/conversations/{id} only)
    turns: list[TurnPublic] | None = None
    turn_count: int
    #: jobs its messages made (any status), and what they cost and used
    jobs: int
    cost_usd: MoneyNumber
    usage: UsagePublic
    last_job_id: str | None
    created_at: str


class ConversationList(BaseModel):
    data: list[ConversationPublic]
    next_cursor: str | None


def create_conversation(session: Session, *, key_id: str, body: ConversationCreate) -> Conversation:
    conversation = Conversation(
        key_id=key_id,
        system=body.system,
        model=body.model,
        policy=body.policy.model_dump(mode="json", exclude_none=True),
        params=body.params,
        context_tokens=body.context_tokens,
        meta=body.metadata,
    )
    session.add(conversation)
    return conversation


def get_conversation(session: Session, *, conversation_id: str, key_id: str) -> Conversation:
    """The key's conversation; another key's does not exist for it (404)."""
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.key_id != key_id:
        raise ConversationNotFound(f"no conversation with id {conversation_id!r}")
    return conversation


def ensure_idle(session: Session, conversation: Conversation) -> None:
    """409 while the job of the conversation's latest message has not finished."""
    if conversation.last_job_id is None:
        return
    job = session.get(Job, conversation.last_job_id)
    if job is not None and job.status not in FINISHED:
        raise Conflict(
            f"conversation {conversation.id} is waiting for job {job.id} ({job.status}); "
            "send the next message once it has finished"
        )


def list_turns(session: Session, *, conversation_id: str) -> list[ConversationTurn]:
    query = select(ConversationTurn).where(ConversationTurn.conversation_id == conversation_id)
    return list(session.exec(query.order_by(col(ConversationTurn.id))))


def as_context_turns(rows: list[ConversationTurn], encoding_name: str) -> list[Turn]:
    """Stored turns as the trimming sees them; counts made with another encoding are redone."""
    turns = []
    for index, row in enumerate(rows):
        message = turn_message(row)
        tokens = row.tokens if row.encoding == encoding_name else None
        turns.append(
            Turn(
                index=index,
                job_id=row.job_id,
                message=message,
                tokens=message_tokens(message, encoding_name) if tokens is None else tokens,
            )
        )
    return turns


def turn_message(row: ConversationTurn) -> dict[str, Any]:
    """The turn as a chat message (unset fields left out)."""
    message: dict[str, Any] = {"role": row.role}
    if row.content is not None:
        message["content"] = row.content
    if row.tool_calls:
        message["tool_calls"] = row.tool_calls
    if row.tool_call_id:
        message["tool_call_id"] = row.tool_call_id
    return message


_CONVERSATIONS = Conversation.__table__.c
_CLAIM_TURN = (
    update(Conversation.__table__)
    .where(
        _CONVERSATIONS.id == bindparam("b_id"),
        _CONVERSATIONS.key_id == bindparam("b_key_id"),
        _CONVERSATIONS.last_job_id.is_not_distinct_from(bindparam("b_seen", type_=String())),
    )
    .values(last_job_id=bindparam("b_job_id"))
)


def claim_turn(
    session: Session, *, conversation_id: str, key_id: str, seen: str | None, job_id: str
) -> None:
    """Make `job_id` the conversation's latest job if it still is at `seen` (what the caller
    read and found finished); else 409, or 404 when the conversation was deleted meanwhile."""
    params = {"b_id": conversation_id, "b_key_id": key_id, "b_seen": seen, "b_job_id": job_id}
    if session.execute(_CLAIM_TURN, params).rowcount == 1:
        return
    get_conversation(session, conversation_id=conversation_id, key_id=key_id)
    raise Conflict(
        f"conversation {conversation_id} accepted another message meanwhile; "
        "send this one once that message's job has finished"
    )


_INSERT_TURN = insert(ConversationTurn.__table__)


def add_exchange(
    session: Session,
    *,
    conversation_id: str,
    job_id: str,
    messages: list[dict[str, Any]],
    encoding_name: str,
) -> None:
    """Store what a succeeded job sent and got back as turns (the caller's transaction)."""
    now = utcnow()
    session.execute(
        _INSERT_TURN,
        [
            {
                "conversation_id": conversation_id,
                "job_id": job_id,
                "role": message["role"],
                "content": message.get("content"),
                "tool_calls": message.get("tool_calls"),
                "tool_call_id": message.get("tool_call_id"),
                "tokens": message_tokens(message, encoding_name),
                "encoding": encoding_name,
                "created_at": now,
            }
            for message in messages
        ],
    )


def delete_conversation(session: Session, *, conversation_id: str, key_id: str) -> None:
    """Delete it and its turns (ON DELETE CASCADE); its jobs stay, as billing records.

    Its unfinished job is cancelled first, as `POST /v1/jobs/{id}/cancel` would: that locks the
    job's row before the conversation's, the order a worker ending the job takes too, so a reply
    either lands before the delete (and goes with it) or is not stored at all.
    """
    conversation = get_conversation(session, conversation_id=conversation_id, key_id=key_id)
    if conversation.last_job_id is not None:
        try:
            cancel_job(session, job_id=conversation.last_job_id, key_id=key_id)
            session.flush()
        except (Conflict, JobNotFound):
            pass  # already finished: nothing to stop
    session.delete(conversation)


def _totals(session: Session, ids: list[str]) -> dict[str, tuple]:
    query = (
        select(
            col(Job.conversation_id),
            func.count(col(Job.id)),
            func.sum(col(Job.cost_usd), type_=Money()),
            func.sum(col(Job.prompt_tokens)),
            func.sum(col(Job.completion_tokens)),
        )
        .where(col(Job.conversation_id).in_(ids))
        .group_by(col(Job.conversation_id))
    )
    return {row[0]: tuple(row[1:]) for row in session.exec(query)} if ids else {}


def _turn_counts(session: Session, ids: list[str]) -> dict[str, int]:
    query = (
        select(col(ConversationTurn.conversation_id), func.count(col(ConversationTurn.id)))
        .where(col(ConversationTurn.conversation_id).in_(ids))
        .group_by(col(ConversationTurn.conversation_id))
    )
    return {row[0]: row[1] for row in session.exec(query)} if ids else {}


def _iso(moment: datetime) -> str:
    return aware(moment).isoformat()


def _public(
    conversation: Conversation, totals: tuple | None, turn_count: int
) -> ConversationPublic:
    jobs, cost, prompt, completion = totals or (0, Decimal(0), 0, 0)
    return ConversationPublic(
        id=conversation.id,
        system=conversation.system,
        model=conversation.model,
        policy=conversation.policy,
        params=conversation.params,
        context_tokens=conversation.context_tokens,
        metadata=conversation.meta or {},
        turn_count=turn_count,
        jobs=jobs,
        cost_usd=cost or Decimal(0),
        usage=UsagePublic(
            prompt_tokens=prompt or 0,
            completion_tokens=completion or 0,
            total_tokens=(prompt or 0) + (completion or 0),
        ),
        last_job_id=conversation.last_job_id,
        created_at=_iso(conversation.created_at),
    )


def conversation_public(session: Session, conversation: Conversation) -> ConversationPublic:
    """The conversation with its turns, jobs and cost."""
    rows = list_turns(session, conversation_id=conversation.id)
    public = _public(
        conversation, _totals(session, [conversation.id]).get(conversation.id), len(rows)
    )
    public.turns = [
        TurnPublic(
            role=row.role,
            content=row.content,
            tool_calls=row.tool_calls,
            tool_call_id=row.tool_call_id,
            job_id=row.job_id,
            tokens=row.tokens,
            created_at=_iso(row.created_at),
        )
        for row in rows
    ]
    return public


def list_conversations(
    session: Session, *, key_id: str, limit: int, cursor: str | None
) -> tuple[list[ConversationPublic], str | None]:
    """Newest first, keyset-paginated like the jobs list (the same cursor format)."""
    query = select(Conversation).where(Conversation.key_id == key_id)
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        stamp = db_moment(session, stamp)
        query = query.where(
            (col(Conversation.created_at) < stamp)
            | ((col(Conversation.created_at) == stamp) & (col(Conversation.id) < last_id))
        )
    order = (col(Conversation.created_at).desc(), col(Conversation.id).desc())
    rows = list(session.exec(query.order_by(*order).limit(limit + 1)))
    more, rows = len(rows) > limit, rows[:limit]
    ids = [row.id for row in rows]
    totals, counts = _totals(session, ids), _turn_counts(session, ids)
    page = [_public(row, totals.get(row.id), counts.get(row.id, 0)) for row in rows]
    return page, (_encode_cursor(rows[-1]) if more else None)


def _encode_cursor(conversation: Conversation) -> str:
    raw = f"{_iso(conversation.created_at)}|{conversation.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
