"""`GET /v1/usage`: tokens and dollars spent by the calling key, summed from attempts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import KeyDep, SessionDep
from api.openapi import KEYED, problem_responses
from api.openapi_schemas import UsageReport
from api.responses import PlainJSONResponse
from models.usage import GroupBy, parse_bound, usage_report

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get(
    "/usage",
    response_model=None,
    responses={200: {"model": UsageReport}, **problem_responses(*KEYED, 422)},
)
def usage(
    key: KeyDep,
    session: SessionDep,
    group_by: GroupBy = "model",
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
) -> PlainJSONResponse:
    """Spending per model, day, key or job status; `from`/`to` are ISO dates or datetimes.
    Money as plain JSON numbers (`0.0000258`), summed exactly in Decimal."""
    report = usage_report(
        session,
        key_id=key.id,
        group_by=group_by,
        start=parse_bound(start),
        end=parse_bound(end, end=True),
    )
    return PlainJSONResponse(report)
