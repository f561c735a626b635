"""A conversation's next message: build its job from the stored turns, then submit it as any job.

The turns are read first; the job is planned (cost policy, budget) and stored by the ordinary
submit path, whose transaction starts by claiming the conversation's turn (models/conversations.py:
a compare-and-set on the conversation's latest job), so a message that lost a race stores nothing.
"""

from __future__ import annotations

import hashlib

from sqlmodel import Session

from api.services import Services
from api.submit import submit_job
from models.conversation_jobs import next_job
from models.conversations import (
    MessageCreate,
    claim_turn,
    ensure_idle,
    get_conversation,
    list_turns,
)
from models.db import session_scope
from models.idempotency import replay, request_fingerprint
from models.jobs import Job
from models.keys import ApiKey


def message_fingerprint(conversation_id: str, body: MessageCreate) -> str:
    """What an Idempotency-Key of a message is checked against: the conversation and the body
    the client sent (not the job's messages, which grow with the conversation)."""
    return hashlib.sha256(f"{conversation_id}:{request_fingerprint(body)}".encode()).hexdigest()


def post_message(
    services: Services,
    *,
    key: ApiKey,
    conversation_id: str,
    body: MessageCreate,
    idempotency_key: str | None = None,
) -> Job:
    """The queued job answering `body`; 404, 409 (a turn is unfinished, or the Idempotency-Key
    was used for another request), 422 or 402 otherwise. A replayed Idempotency-Key returns the
    first job, finished or not."""
    fingerprint = message_fingerprint(conversation_id, body) if idempotency_key else None
    with session_scope(services.engine) as session:
        conversation = get_conversation(session, conversation_id=conversation_id, key_id=key.id)
        if idempotency_key and (
            first := replay(
                session,
                key_id=key.id,
                keys=[idempotency_key],
                fingerprint=fingerprint or "",
                name=idempotency_key,
            )
        ):
            return first[0]
        ensure_idle(session, conversation)
        rows = list_turns(session, conversation_id=conversation_id)
    planned = next_job(
        conversation, rows, body, catalogue=services.catalogue, defaults=services.defaults
    )

    def claim(session: Session, jobs: list[Job]) -> None:
        job = jobs[0]
        claim_turn(
            session,
            conversation_id=conversation_id,
            key_id=key.id,
            seen=conversation.last_job_id,
            job_id=job.id,
        )
        job.conversation_id, job.context = conversation_id, planned.context

    return submit_job(
        services,
        key=key,
        body=planned.body,
        idempotency_key=idempotency_key,
        before_store=claim,
        fingerprint=fingerprint,
    )
