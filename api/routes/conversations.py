"""`/v1/conversations`: multi-turn chats whose every message is an ordinary text job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from api.conversations import post_message
from api.deps import KeyDep, ServicesDep, SessionDep
from api.openapi import BODY, KEYED, problem_responses
from api.responses import model_response
from models.conversation_jobs import check_settings
from models.conversations import (
    ConversationCreate,
    ConversationList,
    ConversationPublic,
    MessageCreate,
    conversation_public,
    create_conversation,
    delete_conversation,
    get_conversation,
    list_conversations,
)
from models.jobs import job_public
from models.schemas import JobPublic

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])
CREATED = {
    "headers": {"Location": {"description": "the conversation's URL", "schema": {"type": "string"}}}
}
ACCEPTED = {"headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}}
MESSAGE_PROBLEMS = problem_responses(
    *KEYED,
    *BODY,
    402,
    404,
    409,
    notes={
        409: "The conversation's previous message has not finished, another message was "
        "accepted at the same time, or the Idempotency-Key was used with a different request.",
        422: "Invalid input, or the system message and this message exceed the context budget.",
    },
)


@router.post(
    "",
    status_code=201,
    response_model=ConversationPublic,
    responses={201: CREATED, **problem_responses(*KEYED, *BODY)},
)
def create(
    body: ConversationCreate,
    key: KeyDep,
    services: ServicesDep,
    session: SessionDep,
) -> Response:
    """Start a conversation; its model, policy and params are checked now (422)."""
    check_settings(body, catalogue=services.catalogue, defaults=services.defaults)
    conversation = create_conversation(session, key_id=key.id, body=body)
    session.flush()
    headers = {"Location": f"/v1/conversations/{conversation.id}"}
    return model_response(
        conversation_public(session, conversation), status_code=201, headers=headers
    )


@router.post(
    "/{conversation_id}/messages",
    status_code=202,
    response_model=JobPublic,
    responses={202: ACCEPTED, **MESSAGE_PROBLEMS},
)
def message(
    conversation_id: str,
    body: MessageCreate,
    key: KeyDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Send the next message: 202 with its job (poll it); 409 while the previous one runs."""
    job = post_message(
        services,
        key=key,
        conversation_id=conversation_id,
        body=body,
        idempotency_key=idempotency_key,
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    return model_response(job_public(job), status_code=202, headers=headers)


@router.get("", response_model=ConversationList, responses=problem_responses(*KEYED, 422))
def index(
    key: KeyDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The key's conversations, newest first, without their turns; `next_cursor` pages on."""
    page, next_cursor = list_conversations(session, key_id=key.id, limit=limit, cursor=cursor)
    return model_response(ConversationList(data=page, next_cursor=next_cursor))


@router.get(
    "/{conversation_id}",
    response_model=ConversationPublic,
    responses=problem_responses(*KEYED, 404),
)
def show(conversation_id: str, key: KeyDep, session: SessionDep) -> Response:
    """The conversation with its turns (oldest first), jobs count, cost and usage."""
    conversation = get_conversation(session, conversation_id=conversation_id, key_id=key.id)
    return model_response(conversation_public(session, conversation))


@router.delete(
    "/{conversation_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted."}, **problem_responses(*KEYED, 404)},
)
def delete(conversation_id: str, key: KeyDep, session: SessionDep) -> Response:
    """Delete it and its turns; its unfinished job is cancelled; its jobs stay."""
    delete_conversation(session, conversation_id=conversation_id, key_id=key.id)
    return Response(status_code=204)
