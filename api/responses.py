"""JSON responses that write money as plain JSON numbers (`"cost_usd": 0.0000258`)."""

from __future__ import annotations

from typing import Any

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
