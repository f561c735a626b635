"""FastAPI dependencies: services, a session per request, and the calling API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.services import Services
from api.url_guard import refuse_nul_in_url
from models.db import session_scope
from models.errors import Unauthorized
from models.keys import ApiKey, hash_secret, key_by_digest


async def get_services(request: Request) -> Services:
    """Async because it does no I/O: FastAPI runs a sync dependency in its thread pool."""
    return services_of(request)


def services_of(request: Request) -> Services:
    """The app's services, read off the request: for the submit path and `current_key`, where
    each dependency FastAPI solves per request costs more than this attribute read."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with session_scope(services.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

#: reads `Authorization: Bearer …` and names the scheme in the OpenAPI document (`security`)
bearer = HTTPBearer(
    auto_error=False, scheme_name="apiKey", description="a key from `genq keys create NAME`"
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def current_key(request: Request, credentials: BearerDep) -> ApiKey:
    """The key named by `Authorization: Bearer <secret>`, or 401; then a URL holding a NUL is
    refused (api/url_guard.py) before the route queries by it.

    A key verified in the last `GENQ_AUTH_CACHE_S` seconds comes from memory (api/key_cache.py),
    without leaving the event loop; any other is read in the thread pool, in its own short
    session: were it to share the request's, a submit would hold that connection while storing
    the job through another, and enough concurrent submits would exhaust the pool with every
    request waiting for a second connection.
    """
    if credentials is None:
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    services = services_of(request)
    digest = hash_secret(credentials.credentials)
    key = services.verified_keys.get(digest)
    if key is None:
        key = await run_in_threadpool(_read_key, services, digest)
    if key is None:
        raise Unauthorized("the API key is unknown or revoked")
    refuse_nul_in_url(request.scope)
    return key


def _read_key(services: Services, digest: str) -> ApiKey | None:
    cache = services.verified_keys
    read_after = cache.evictions
    with session_scope(services.engine) as session:
        key = key_by_digest(session, digest=digest)
    if key is not None:
        cache.put(digest, key, read_after=read_after)
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]
