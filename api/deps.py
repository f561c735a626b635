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


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with session_scope(services.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_key(request: Request, session: SessionDep) -> ApiKey:
    """The key named by `Authorization: Bearer <secret>`, or 401."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    key = authenticate(session, secret=secret.strip())
    if key is None:
        raise Unauthorized("the API key is unknown or revoked")
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]
