"""Which model runs a job. v0: the request's `model`, else the default for its kind.

This is the seam the cost policy grows from: a pure function of the request, the catalogue and
the defaults, with no I/O, so it is tested with tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.catalogue import Catalogue, ModelSpec
from models.errors import InvalidRequest
from models.schemas import JobCreate


@dataclass(frozen=True, kw_only=True)
class Defaults:
    text_model: str
    image_model: str


def choose_model(request: JobCreate, catalogue: Catalogue, defaults: Defaults) -> ModelSpec:
    """The model for this request, checked to exist and to produce the requested kind."""
    model_id = request.model or (
        defaults.text_model if request.kind == "text" else defaults.image_model
    )
    spec = catalogue.get(model_id)
    if spec is None:
        known = ", ".join(sorted(m.id for m in catalogue if m.kind == request.kind))
        raise InvalidRequest(
            f"unknown model {model_id!r}; {request.kind} models: {known}",
            errors=[{"loc": ["body", "model"], "msg": "unknown model"}],
        )
    if spec.kind != request.kind:
        raise InvalidRequest(
            f"model {model_id!r} makes {spec.kind}, not {request.kind}",
            errors=[{"loc": ["body", "model"], "msg": f"not a {request.kind} model"}],
        )
    return spec
