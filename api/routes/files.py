"""`/v1/files`: OpenAI's Files API for batch input and output files."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServicesDep, SessionDep
from api.openapi import BODY, KEYED, problem_responses
from api.responses import After, model_response, page_response
from api.uploads import receive_upload
from models.batch_schemas import FileDeleted, FileList, FilePublic
from models.db import session_scope
from models.errors import InvalidRequest
from models.files import (
    create_file,
    delete_file,
    file_path,
    file_public,
    get_file,
    iter_content,
    list_files,
    new_file_id,
    remove_content,
)

router = APIRouter(prefix="/v1/files", tags=["files"])
#: what a client may upload (genq makes the `batch_output` files itself)
UPLOAD_PURPOSES = ("batch",)
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=FilePublic,
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(*KEYED, *BODY),
)
async def upload(request: Request, key: KeyDep, services: ServicesDep) -> Response:
    """Upload a batch input file (JSONL), written to disk as it arrives."""
    file_id = new_file_id()
    target = file_path(services.settings.files_dir, file_id)
    received = await receive_upload(
        request, target=target, max_bytes=services.settings.max_file_bytes
    )
    purpose = received.fields.get("purpose")
    if purpose not in UPLOAD_PURPOSES:
        target.unlink(missing_ok=True)
        raise InvalidRequest(
            f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}, not {purpose!r}",
            errors=[{"loc": ["body", "purpose"], "msg": "must be `batch`"}],
        )

    def record() -> FilePublic:
        with session_scope(services.engine) as session:
            stored = create_file(
                session,
                file_id=file_id,
                key_id=key.id,
                filename=received.filename or "upload.jsonl",
                purpose=purpose,
                path=target,
                size=received.size,
            )
            return file_public(stored)

    try:
        public = await run_in_threadpool(record)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return model_response(public)


@router.get("", response_model=FileList, responses=problem_responses(*KEYED, 404, 422))
def index(
    key: KeyDep,
    session: SessionDep,
    purpose: Literal["batch", "batch_output"] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: After = None,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    """The key's files, newest first (`order=asc`: oldest first); page on with `after`."""
    files, more = list_files(
        session, key_id=key.id, purpose=purpose, limit=limit, after=after, order=order
    )
    return page_response(FileList, [file_public(f) for f in files], more=more)


@router.get("/{file_id}", response_model=FilePublic, responses=problem_responses(*KEYED, 404))
def show(file_id: str, key: KeyDep, session: SessionDep) -> Response:
    """The file's object (name, size, purpose)."""
    return model_response(file_public(get_file(session, file_id=file_id, key_id=key.id)))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes, as uploaded or written.",
            "content": {"application/octet-stream": {"schema": {}}},
        },
        **problem_responses(*KEYED, 404),
    },
)
def content(file_id: str, key: KeyDep, session: SessionDep) -> StreamingResponse:
    """The file's bytes, streamed."""
    stored = get_file(session, file_id=file_id, key_id=key.id)
    chunks = iter_content(stored)
    first = next(chunks, b"")  # a missing file is a 404 now, not a broken stream later
    headers = {"Content-Length": str(stored.bytes)}

    def stream():
        yield first
        yield from chunks

    return StreamingResponse(stream(), media_type="application/octet-stream", headers=headers)


@router.delete("/{file_id}", response_model=FileDeleted, responses=problem_responses(*KEYED, 404))
def remove(file_id: str, key: KeyDep, services: ServicesDep) -> Response:
    """Delete the file, then its bytes (once the record is gone for good)."""
    with session_scope(services.engine) as session:
        stored = delete_file(session, file_id=file_id, key_id=key.id)
    remove_content(stored)
    return model_response(FileDeleted(id=stored.id, deleted=True))
