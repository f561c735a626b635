"""`/v1/batches`: OpenAI's Batch API over genq jobs (create, retrieve, list)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.batch_intake import create_batch
from api.deps import KeyDep, ServicesDep, SessionDep
from api.openapi import BODY, KEYED, problem_responses
from api.responses import After, model_response, page_response
from models.batch_schemas import BatchCreate, BatchList, BatchPublic
from models.batches import batch_public, get_batch, list_batches
from models.db import session_scope

router = APIRouter(prefix="/v1/batches", tags=["batches"])
CREATE_PROBLEMS = problem_responses(
    *KEYED,
    *BODY,
    402,
    404,
    notes={
        402: "The key's budget cannot cover the whole batch's worst case; nothing was stored.",
        404: "No input file with that id for this key.",
    },
)


@router.post("", response_model=BatchPublic, responses=CREATE_PROBLEMS)
def create(body: BatchCreate, key: KeyDep, services: ServicesDep) -> Response:
    """Turn each line of the input file into a queued job: `in_progress` at once, or `failed`
    with `errors` naming the bad lines (and no job)."""
    batch = create_batch(services, key=key, body=body)
    with session_scope(services.engine) as session:
        public = batch_public(session, batch)
    return model_response(public)


@router.get("", response_model=BatchList, responses=problem_responses(*KEYED, 404, 422))
def index(
    key: KeyDep,
    session: SessionDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """The key's batches, newest first; page on with `after` (the last id of a page)."""
    batches, more = list_batches(session, key_id=key.id, limit=limit, after=after)
    return page_response(BatchList, [batch_public(session, b) for b in batches], more=more)


@router.get("/{batch_id}", response_model=BatchPublic, responses=problem_responses(*KEYED, 404))
def show(batch_id: str, key: KeyDep, session: SessionDep) -> Response:
    """The batch, with its jobs' counts, usage and cost so far."""
    return model_response(
        batch_public(session, get_batch(session, batch_id=batch_id, key_id=key.id))
    )
