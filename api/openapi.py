"""The OpenAPI document: each route declares the problem statuses it answers, in one vocabulary.

A route lists its error statuses with `problem_responses(401, 404, 503)` in its decorator;
each becomes an `application/problem+json` response whose schema is the shared `Problem`
component. `install_openapi` adds that component and drops FastAPI's automatic 422 (an
`application/json` shape genq never sends), so the document says only what genq answers.
`tests/unit/test_openapi_document.py` checks every route against these rules, and
`tests/e2e/test_schemathesis.py` checks the live API against the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from models.schemas import ImageParams, TextParams

PROBLEM_MEDIA_TYPE = "application/problem+json"
REF_TEMPLATE = "#/components/schemas/{model}"
PROBLEM_REF = {"$ref": REF_TEMPLATE.format(model="Problem")}

#: RFC 9457 problem details as genq sends them (api/errors.py, api/limits.py)
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; clients ignore members they do not know.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": "a URI naming the kind of problem; `about:blank`: the status says it",
            "examples": ["https://genq.dev/problems/invalid-request"],
        },
        "title": {"type": "string", "description": "the kind of problem, for humans"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what went wrong with this request"},
        "errors": {
            "type": "array",
            "description": "validation problems (422): where, and why; the input is not echoed",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        "examples": [["body", "messages", 0, "content"]],
                    },
                    "msg": {"type": "string"},
                },
            },
        },
    },
}

#: why genq answers each status, as the document says it (a route may say more)
REASONS: dict[int, str] = {
    400: "The body could not be parsed (not JSON, or not UTF-8).",
    401: "Missing `Authorization: Bearer <api key>`, or the key is unknown or revoked.",
    402: "The key's budget cannot cover the request's worst-case cost; nothing was stored.",
    404: "No such resource for this key (another key's resource is 404 too).",
    409: "The request conflicts with the resource's current state.",
    413: "The body exceeds GENQ_MAX_BODY_BYTES.",
    422: "The request is well-formed but invalid; `errors` says where and why.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "A dependency (database or Redis) does not answer; nothing was stored, retry later.",
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
}

#: every route behind the API key: a bad key, or the database that checks it is down
KEYED = (401, 503)
#: every route that reads a JSON body
BODY = (400, 413, 422)


def problem_responses(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, Any]:
    """`responses=` for a route decorator: each status as problem+json, with its reason."""
    notes = notes or {}
    responses: dict[int | str, Any] = {}
    for status in sorted(set(statuses)):
        declared: dict[str, Any] = {
            "description": notes.get(status, REASONS[status]),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if status in _HEADERS:
            declared["headers"] = _HEADERS[status]
        responses[status] = declared
    return responses


def cancel_problems(conflict: str) -> dict[int | str, Any]:
    """`responses=` for a `POST …/{id}/cancel` route: the key's problems, 404 (not this key's),
    and 409 with `conflict`, why nothing is left to cancel."""
    return problem_responses(*KEYED, 404, 409, notes={409: conflict})


def install_openapi(app: FastAPI) -> None:
    """Build the document with the `Problem` component and without FastAPI's default 422."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _drop_default_validation_errors(document)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        _params_by_kind(schemas)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_default_validation_errors(document: dict[str, Any]) -> None:
    """FastAPI adds a 422 `HTTPValidationError` to routes that did not declare one: genq's 422s
    are problem+json, and a route that cannot answer 422 should not say it does."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses and PROBLEM_MEDIA_TYPE not in responses["422"].get("content", {}):
                del responses["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _params_by_kind(schemas: dict[str, Any]) -> None:
    """A job's `params` are checked at submit as `TextParams` or `ImageParams` by its `kind`
    (models/planning.py); the document says which, with the models' own schemas."""
    _, definitions = models_json_schema(
        [(TextParams, "validation"), (ImageParams, "validation")], ref_template=REF_TEMPLATE
    )
    for name, schema in definitions.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    job = schemas["JobCreate"]
    job["properties"]["params"]["description"] = (
        "`TextParams` for text jobs, `ImageParams` for images"
    )
    job["if"] = {"properties": {"kind": {"const": "image"}}, "required": ["kind"]}
    job["then"] = {"properties": {"params": {"$ref": REF_TEMPLATE.format(model="ImageParams")}}}
    job["else"] = {"properties": {"params": {"$ref": REF_TEMPLATE.format(model="TextParams")}}}
