"""`GET /v1/models`: what can be asked for, and what it costs."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyDep, ServicesDep
from api.openapi import KEYED, problem_responses
from api.openapi_schemas import ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=None,
    responses={200: {"model": ModelList}, **problem_responses(*KEYED)},
)
def models(_key: KeyDep, services: ServicesDep) -> dict:
    return {"data": [spec.public() for spec in services.catalogue]}
