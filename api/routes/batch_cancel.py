"""`POST /v1/batches/{id}/cancel`: the batch answers `cancelling`; queued lines never run."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import KeyDep, ServicesDep
from api.openapi import cancel_problems
from api.responses import model_response
from models.batch_run import cancel_batch
from models.batch_schemas import BatchPublic
from models.batches import batch_public
from models.db import session_scope

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchPublic,
    responses=cancel_problems(
        "The batch already ended (completed, failed, expired, cancelled) or is finalizing: "
        "nothing is left to cancel."
    ),
)
def cancel(batch_id: str, key: KeyDep, services: ServicesDep) -> Response:
    """200 with the batch `cancelling`: its queued jobs are cancelled (their budget released),
    its running ones stop at their next safe point; it becomes `cancelled`, with its files,
    once none runs. Cancelling again answers the same; 409 once it ended."""
    with session_scope(services.engine) as session:
        batch = cancel_batch(session, batch_id=batch_id, key_id=key.id)
        public = batch_public(session, batch)
    services.publisher.queue_finalize(batch_id)
    return model_response(public)
