"""`GET /v1/usage`: tokens and dollars spent by the calling key, summed from attempts."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyDep, SessionDep
from models.usage import GroupBy, usage_report

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage")
def usage(key: KeyDep, session: SessionDep, group_by: GroupBy = "model") -> dict:
    return usage_report(session, key_id=key.id, group_by=group_by)
