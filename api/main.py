"""The genq REST API: builds the app and gathers the routers."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.metrics import MetricsMiddleware
from api.openapi import install_openapi
from api.request_id import RequestIdMiddleware
from api.routes import (
    batch_cancel,
    batches,
    cancel,
    catalogue,
    conversations,
    events,
    files,
    health,
    jobs,
    stats,
    usage,
    webhooks,
)
from api.services import Services
from models.key_events import follow_key_changes
from models.logging import configure_logging
from models.settings import Settings, get_settings
from models.webhooks import publish_on_commit

#: room for the multipart envelope (boundaries, part headers, `purpose`) around an upload
UPLOAD_ENVELOPE_BYTES = 65_536
#: how long the API's start waits for its subscription to key changes (models/key_events.py)
KEY_CHANGES_WAIT_S = 3.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to `settings` (the process settings when not given)."""
    settings = settings or get_settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # a key changed with `genq keys` leaves every process's cache at once (not by TTL)
        follower = None
        if settings.auth_cache_s > 0:
            settled = asyncio.Event()
            follower = asyncio.create_task(
                follow_key_changes(
                    settings.redis_url,
                    changed=lambda key_id: services.verified_keys.evict(key_id),
                    resubscribed=lambda: services.verified_keys.clear(),
                    settled=settled,
                ),
                name="genq key changes",
            )
            # serve once subscribed (no change is missed from the first request on), or once
            # Redis has failed (the follower keeps trying; the TTL bounds what it misses)
            with suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), KEY_CHANGES_WAIT_S)
        yield
        if follower is not None:
            follower.cancel()
            with suppress(asyncio.CancelledError):
                await follower
        services.publisher.close()
        await services.events.aclose()

    app = FastAPI(
        title="genq",
        version="1",
        lifespan=lifespan,
        description="Text and image generation jobs, queued, retried and costed.",
    )
    app.state.services = services
    # a job's end opened in a request (a cancel, a cached answer) publishes its webhook
    publish_on_commit(services.publisher.publish_webhooks)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        drain_bytes=settings.body_drain_bytes,
        drain_timeout_s=settings.body_drain_timeout_s,
        # the multipart envelope around the file takes a few hundred bytes more
        uploads={"/v1/files": settings.max_file_bytes + UPLOAD_ENVELOPE_BYTES},
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: every line of a request has its id
    install_error_handlers(app)
    install_openapi(app)
    routers = (jobs, cancel, batch_cancel, webhooks, events, conversations, files, batches)
    for module in (*routers, catalogue, usage, health, stats):
        app.include_router(module.router)
    return app


def app_factory() -> FastAPI:
    """Entry point for uvicorn (`--factory`)."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)
