"""FastAPI dependencies: services, a session per request, and the calling API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from api.services import Services
from models.db import session_scope
from models.errors import Unauthorized
from models.keys import ApiKey, authenticate


async def get_services(request: Request) -> Services:
    """Async because it does no I/O: FastAPI runs a sync dependency in its thread pool."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with session_scope(services.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_key(request: Request, services: ServicesDep) -> ApiKey:
    """The key named by `Authorization: Bearer <secret>`, or 401.

    It uses its own short session: were it to share the request's, a submit would hold that
    connection while storing the job through another, and enough concurrent submits would
    exhaust the pool with every request waiting for a second connection.
    """
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    with session_scope(services.engine) as session:
        key = authenticate(session, secret=secret.strip())
    if key is None:
        raise Unauthorized("the API key is unknown or revoked")
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]
