"""`GET /v1/models`: what can be asked for, and what it costs."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyDep, ServicesDep
from api.openapi import KEYED, problem_responses
from api.openapi_schemas import ModelList
from api.responses import PlainJSONResponse

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=None,
    responses={200: {"model": ModelList}, **problem_responses(*KEYED)},
)
def models(_key: KeyDep, services: ServicesDep) -> PlainJSONResponse:
    """The catalogue; prices as plain JSON numbers (`0.00001`, never `1e-05`)."""
    return PlainJSONResponse({"data": [spec.public() for spec in services.catalogue]})
