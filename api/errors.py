"""Every error leaves the API as application/problem+json (RFC 9457), mapped in one place."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import PlainJSONResponse
from models.errors import GenqError

log = structlog.get_logger("genq.api")

PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    errors: list[dict] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return PlainJSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict]:
    """Location and reason of each error; the offending input is not echoed back."""
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", "invalid")} for err in exc.errors()
    ]


async def _genq_error(_request: Request, exc: GenqError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    retry_after = getattr(exc, "retry_after_s", None)
    if exc.status in (429, 503) and retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    return problem(
        exc.status, exc.title, exc.detail, type_=exc.type, errors=exc.errors, headers=headers
    )


async def _invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _validation_errors(exc)
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return problem(
        422,
        "Invalid request",
        f"{where}: {first['msg']}",
        type_="https://genq.dev/problems/invalid-request",
        errors=errors,
    )


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    title = HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None))


def _not_ready(detail: str) -> JSONResponse:
    return problem(
        503,
        "Service not ready",
        detail,
        type_="https://genq.dev/problems/not-ready",
        headers={"Retry-After": "5"},
    )


async def _schema_problem(request: Request) -> str | None:
    """After a database error only: is the schema behind (`genq migrate` not run)?"""
    try:
        return await run_in_threadpool(request.app.state.services.schema.problem)
    except Exception:  # the database is down as well: the caller says so
        return None


async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
    """The database did not answer (or lacks a table): nothing was stored, the client may retry."""
    if reason := await _schema_problem(request):
        return _not_ready(reason)
    log.warning("database.unavailable", error=type(exc.orig).__name__ if exc.orig else "unknown")
    return _not_ready("the database is unavailable; nothing was stored, retry the request")


async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
    """A statement failed: on a database behind the code (PostgreSQL's undefined table or
    column) that is `genq migrate` not run, else a bug."""
    if reason := await _schema_problem(request):
        return _not_ready(reason)
    return await _unexpected(request, exc)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its type; the client gets problem+json without internals."""
    log.error("api.unexpected_error", error=type(exc).__name__)
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(GenqError, _genq_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(StarletteHTTPException, _http_error)
