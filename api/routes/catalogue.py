"""`GET /v1/models`: what can be asked for, and what it costs."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyDep, ServicesDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def models(_key: KeyDep, services: ServicesDep) -> dict:
    return {"data": [spec.public() for spec in services.catalogue]}
