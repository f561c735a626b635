"""`/v1/jobs`: submit, poll, list, and fetch generated images."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response

from api.deps import KeyDep, SessionDep, services_of
from api.openapi import BODY, KEYED, problem_responses
from api.responses import model_response
from api.services import Services
from api.submit import submit_batch, submit_job
from api.threads import in_thread
from models.attempts import get_image, job_detail
from models.errors import JobNotFound
from models.jobs import get_job, is_cache_hit, job_public, list_jobs
from models.keys import ApiKey
from models.schemas import JobBatch, JobBatchCreate, JobCreate, JobList, JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
StatusFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: what a generated image may be served as: sniffed from its bytes (worker/image_formats.py)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/svg+xml")
ACCEPTED = {"headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}}
#: an image index the database column holds (a larger one overflowed it: a 500, not a 404)
MAX_INDEX = 2**31 - 1
SUBMIT_PROBLEMS = problem_responses(
    *KEYED, *BODY, 402, 409, notes={409: "The Idempotency-Key was used with a different request."}
)


@router.post(
    "", status_code=202, response_model=JobPublic, responses={202: ACCEPTED, **SUBMIT_PROBLEMS}
)
async def create(
    body: JobCreate,
    key: KeyDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Accept a job; poll the URL in `Location` for its result."""
    # the services off the request, not a dependency (one fewer for FastAPI to solve), and the
    # blocking work in a submit thread (api/threads.py), not through anyio's
    return await in_thread(_accept, services_of(request), key, body, idempotency_key)


def _accept(
    services: Services, key: ApiKey, body: JobCreate, idempotency_key: str | None
) -> Response:
    """The submit's blocking part: store and publish the job, then its 202."""
    job = submit_job(services, key=key, body=body, idempotency_key=idempotency_key)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    return model_response(job_public(job), status_code=202, headers=headers)


@router.post(
    "/batch",
    status_code=202,
    response_model=JobBatch,
    responses=SUBMIT_PROBLEMS,
)
def create_batch(
    body: JobBatchCreate,
    key: KeyDep,
    request: Request,
    # job i of the batch is stored under `K#i`, so a key leaves room for the suffix
    idempotency_key: Annotated[str | None, Header(max_length=190)] = None,
) -> Response:
    """Accept up to 100 jobs at once, all or none; poll each job as usual."""
    jobs = submit_batch(
        services_of(request), key=key, bodies=body.jobs, idempotency_key=idempotency_key
    )
    return model_response(JobBatch(data=[job_public(job) for job in jobs]), status_code=202)


@router.get("", response_model=JobList, responses=problem_responses(*KEYED, 422))
def index(
    key: KeyDep,
    session: SessionDep,
    status: StatusFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    batch_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The key's jobs, newest first; pass `next_cursor` back as `cursor` for the next page;
    `batch_id`: only the jobs of that batch."""
    jobs, next_cursor = list_jobs(
        session, key_id=key.id, status=status, limit=limit, cursor=cursor, batch_id=batch_id
    )
    return model_response(JobList(data=[job_public(j) for j in jobs], next_cursor=next_cursor))


@router.get("/{job_id}", response_model=JobPublic, responses=problem_responses(*KEYED, 404))
def show(job_id: str, key: KeyDep, session: SessionDep) -> Response:
    """The job, with every provider call it made (which model, outcome, status, cost)."""
    return model_response(job_detail(session, job_id=job_id, key_id=key.id))


#: an SVG may carry scripts: opened directly, it runs in a sandbox that can load nothing
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={
        200: {
            "description": "The image's bytes, with the type sniffed from them.",
            "content": {media: {"schema": {}} for media in IMAGE_TYPES},
        },
        **problem_responses(*KEYED, 404, 422),
    },
)
def image(
    job_id: str, index: Annotated[int, Path(ge=0, le=MAX_INDEX)], key: KeyDep, session: SessionDep
) -> Response:
    """The bytes of one generated image, with the type sniffed from them."""
    job = get_job(session, job_id=job_id, key_id=key.id)
    # a cache hit serves its source's stored bytes (the same key's job: never copied)
    stored = get_image(
        session, job_id=job.cache_source_id if is_cache_hit(job) else job_id, index=index
    )
    if stored is None:
        raise JobNotFound(f"job {job_id!r} has no image {index}")
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
    if stored.content_type == "image/svg+xml":
        headers["Content-Security-Policy"] = SVG_POLICY
    return Response(stored.data, media_type=stored.content_type, headers=headers)
