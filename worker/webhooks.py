"""Delivering webhooks: one signed POST per attempt, off the generation threads.

The Celery task (queue `webhooks`) only claims the delivery and hands it to this process's
delivery loop, an asyncio loop in its own thread: a receiver that never answers holds a socket
for at most GENQ_WEBHOOK_TIMEOUT_S (connect, send and answer together), never a Celery thread,
so generation keeps every thread of the pool. GENQ_WEBHOOK_CONCURRENCY bounds the deliveries
in flight; past it a message is put back with a short countdown.

At least once: the claim is a lease in the database. A worker killed mid-delivery leaves the
delivery pending with a lease that runs out, and the sweeper publishes it again (the same
`webhook-id`, the same body). Every attempt re-checks the URL's addresses (DNS rebinding) and
connects to the address it checked. Redirects are never followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import structlog
from sqlalchemy.engine import Engine

from models.db import session_scope, utcnow
from models.keys import ApiKey
from models.settings import Settings
from models.webhook_events import event_body, signed_headers
from models.webhook_urls import Target, UrlRefused, check_url, host_of
from models.webhooks import (
    RETRY,
    AttemptResult,
    Claim,
    claim_delivery,
    decide,
    record_attempt,
    retry_wait_s,
)
from worker import metrics

log = structlog.get_logger("genq.webhooks")
THREAD_NAME = "genq-webhooks"
#: a lease outlives the longest attempt by this much (DNS, database writes)
LEASE_MARGIN_S = 5.0
#: a message that finds every delivery slot taken comes back after this long
BUSY_COUNTDOWN_S = 1.0
#: errors stored per attempt are cut to this many characters
MAX_ERROR = 300

Publish = Callable[[str, float], None]


class _HostOnly(logging.Filter):
    """httpx logs each request's URL: from the delivery loop, show only its host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.current_thread().name == THREAD_NAME and isinstance(record.args, tuple):
            record.args = tuple(
                host_of(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_HostOnly())


@dataclass(frozen=True)
class Prepared:
    """What an attempt sends: the body (fixed at the first attempt) and the key's secret."""

    body: str
    secret: str | None


def pinned_request(client: httpx.AsyncClient, url: str, target: Target, headers: dict, body: str):
    """The POST to the address that was checked (not a new lookup), with the URL's Host, TLS
    name (SNI and certificate) and, when the URL carries `user:password@`, HTTP Basic auth."""
    parts = urlsplit(url)
    address = target.addresses[0]
    literal = f"[{address}]" if ":" in address else address
    pinned = urlunsplit(
        (target.scheme, f"{literal}:{target.port}", parts.path or "/", parts.query, "")
    )
    headers = {**headers, "host": parts.netloc.rsplit("@", 1)[-1]}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return client.build_request(
        "POST", pinned, content=body.encode(), headers=headers, extensions=extensions
    )


class Deliverer:
    """This process's delivery loop: claims in the caller's thread, POSTs in the loop."""

    def __init__(self, engine: Engine, settings: Settings, publish: Publish | None = None):
        self.engine, self.settings = engine, settings
        self.publish = publish if publish is not None else (lambda _id, _countdown: None)
        self.slots = threading.BoundedSemaphore(settings.webhook_concurrency)
        self.in_flight = 0
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(4, thread_name_prefix="genq-wh-db"))
        self.client: httpx.AsyncClient | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def offer(self, delivery_id: str) -> str:
        """Start an attempt of a due delivery without waiting for it; what happened."""
        if not self.slots.acquire(blocking=False):
            self.publish(delivery_id, BUSY_COUNTDOWN_S)
            return "busy"
        with session_scope(self.engine) as session:
            claim = claim_delivery(
                session,
                delivery_id=delivery_id,
                lease_s=self.settings.webhook_timeout_s + LEASE_MARGIN_S,
            )
        if claim is None:
            self.slots.release()
            return "skipped"
        with self._lock:
            self.in_flight += 1
        future = asyncio.run_coroutine_threadsafe(self.attempt(claim), self.loop)
        future.add_done_callback(self._done)
        return "started"

    def _done(self, future) -> None:
        with self._lock:
            self.in_flight -= 1
        self.slots.release()
        if not future.cancelled() and future.exception() is not None:
            log.error("webhook.attempt_crashed", error=type(future.exception()).__name__)

    def drain(self, timeout_s: float) -> None:
        """Wait (a warm shutdown) until the attempts in flight end, at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)

    async def attempt(self, claim: Claim) -> AttemptResult:
        """One attempt, stored; the next one scheduled when it failed and attempts remain."""
        prepared = await asyncio.to_thread(self._prepare, claim)
        result = await self._post(claim, prepared)
        wait = retry_wait_s(
            claim.number,
            base_s=self.settings.webhook_retry_base_s,
            max_s=self.settings.webhook_retry_max_s,
        )
        stored = await asyncio.to_thread(self._record, claim, prepared.body, result, wait)
        metrics.record_webhook(result.outcome)
        log.info(
            "webhook.attempt",
            webhook_id=claim.delivery_id,
            job_id=claim.job_id,
            host=host_of(claim.url),
            attempt=claim.number,
            outcome=result.outcome,
            status_code=result.status_code,
            ms=result.latency_ms,
        )
        if stored and result.outcome == RETRY:
            self.publish(claim.delivery_id, wait)
        return result

    def _prepare(self, claim: Claim) -> Prepared:
        with session_scope(self.engine) as session:
            body = claim.payload or event_body(session, claim)
            key = session.get(ApiKey, claim.key_id)
            return Prepared(body=body, secret=key.webhook_secret if key else None)

    def _record(self, claim: Claim, body: str, result: AttemptResult, wait: float) -> bool:
        with session_scope(self.engine) as session:
            return record_attempt(
                session, claim=claim, result=result, payload=body, retry_in_s=wait
            )

    async def _post(self, claim: Claim, prepared: Prepared) -> AttemptResult:
        """POST once within the timeout; what came back (a status) or why nothing did."""
        started, clock = utcnow(), time.perf_counter()
        status, error = None, None
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                status = await self._send(claim, prepared)
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        except UrlRefused as exc:
            error = exc.detail
        except httpx.HTTPError as exc:  # never str(exc): it may quote the URL
            error = f"request failed: {type(exc).__name__}"
        except _NoSecret:
            error = "the key has no webhook secret (`genq keys webhook-secret KEY`)"
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}" + (
                " (redirects are not followed)" if 300 <= status < 400 else ""
            )
        outcome = decide(
            status, number=claim.number, max_attempts=self.settings.webhook_max_attempts
        )
        return AttemptResult(
            outcome=outcome,
            status_code=status,
            error=error[:MAX_ERROR] if error else None,
            started_at=started,
            finished_at=utcnow(),
            latency_ms=round((time.perf_counter() - clock) * 1000),
        )

    async def _send(self, claim: Claim, prepared: Prepared) -> int:
        if prepared.secret is None:
            raise _NoSecret
        allow = self.settings.webhook_allow_private
        target = await asyncio.to_thread(check_url, claim.url, allow_private=allow)
        headers = signed_headers(
            secret=prepared.secret, webhook_id=claim.delivery_id, body=prepared.body, now=utcnow()
        )
        client = self._client()
        response = await client.send(
            pinned_request(client, claim.url, target, headers, prepared.body), stream=True
        )
        await response.aclose()  # the status is the answer; the body is not read
        return response.status_code

    def _client(self) -> httpx.AsyncClient:
        """One client for the loop: no redirects, no environment proxies or .netrc, and no
        kept connections (a connection is to a checked address, for one delivery)."""
        if self.client is None:
            self.client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=self.settings.webhook_timeout_s,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self.client

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class _NoSecret(Exception):
    """The job's key has no signing secret (a job stored by a path that did not check)."""
