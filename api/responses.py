"""JSON responses that write money as plain JSON numbers (`"cost_usd": 0.0000258`), and the
OpenAI list page (`after` cursor; `first_id`, `last_id`, `has_more`) the list routes share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from models.jsontext import dumps, model_json


class PlainJSONResponse(JSONResponse):
    """For data that is not a response model (usage reports, the catalogue, problem details):
    FastAPI's own encoder would first turn each Decimal into a float (`2.58e-05`)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def model_response(model: BaseModel, *, status_code: int = 200, **kwargs: Any) -> Response:
    """A response model as JSON, money in plain digits; the route's `response_model` still
    documents it (FastAPI sends a returned Response as it is)."""
    body = model_json(model).encode()
    return Response(body, status_code=status_code, media_type="application/json", **kwargs)


#: OpenAI's list cursor: the last id of the page before (its `last_id`)
After = Annotated[str | None, Query(max_length=64)]


def page_response(page: type[BaseModel], data: Sequence[Any], *, more: bool) -> Response:
    """One page of an OpenAI list (`object: "list"`): its items, their first and last id (page
    on with `after=last_id`), and whether more follow."""
    return model_response(
        page(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=more,
        )
    )
