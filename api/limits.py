"""Reject request bodies over the configured size before they are read into memory.

A 413 sent while the client is still sending is lost when the server then closes the socket
with unread bytes in it: the kernel answers them with a reset, and a client that writes the
whole body before reading (Python's `http.client`, `urllib`, which also asks for
`Connection: close`) sees `ConnectionResetError` instead of the answer. So the rest of the body
is read and thrown away, chunk by chunk (memory stays bounded), before the 413 goes out, up to
`drain_bytes` and `drain_timeout_s`; past either bound the 413 is sent with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI re-raises HTTPExceptions from body parsing."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body exceeds {max_bytes} bytes (GENQ_MAX_BODY_BYTES)")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def drain(receive: Receive, *, limit: int, timeout_s: float) -> bool:
    """Read and discard the request body until it ends: True when it did within the bounds."""
    seen = 0

    async def until_end() -> bool:
        nonlocal seen
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False  # the client went away: nothing left to answer
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if seen > limit:
                return False

    try:
        return await asyncio.wait_for(until_end(), timeout_s)
    except TimeoutError:
        return False


class BodySizeLimit:
    """ASGI middleware: 413 problem+json when the declared or streamed body exceeds the cap."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        drain_bytes: int = 134_217_728,
        drain_timeout_s: float = 30.0,
        uploads: dict[str, int] | None = None,
    ):
        self.app = app
        self.max_bytes = max_bytes
        #: POST paths that take larger bodies (file uploads), with their own cap
        self.uploads = uploads or {}
        self.drain_bytes = drain_bytes
        self.drain_timeout_s = drain_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.max_bytes
        if scope.get("method") == "POST" and scope.get("path") in self.uploads:
            cap = self.uploads[scope["path"]]
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            return await self._refuse_declared(
                scope, receive, send, declared=int(declared), cap=cap
            )
        counted = _CountedRequest(self, receive, send, cap)
        try:
            await self.app(scope, counted.receive, counted.send)
        except BodyTooLarge:
            if not counted.started:
                await self._reject(send, close=not counted.drained, cap=cap)

    async def drain_rest(self, receive: Receive) -> bool:
        """The rest of a refused body, read and discarded within the drain bounds."""
        return await drain(receive, limit=self.drain_bytes, timeout_s=self.drain_timeout_s)

    async def _refuse_declared(
        self, scope: Scope, receive: Receive, send: Send, *, declared: int, cap: int
    ) -> None:
        """Drain what the client is still sending, then answer 413 (closing when not drained).

        A client that waits for `100 Continue` has sent nothing yet: it gets the answer at once
        (reading would invite the body), and so does one that declared more than the drain bound.
        """
        expects = (_header(scope, b"expect") or b"").lower() == b"100-continue"
        drained = False
        if not expects and declared <= self.drain_bytes:
            drained = await self.drain_rest(receive)
        await self._reject(send, close=not drained, cap=cap)

    async def _reject(self, send: Send, *, close: bool, cap: int) -> None:
        body = json.dumps(
            {
                "type": "https://genq.dev/problems/payload-too-large",
                "title": "Request body too large",
                "status": 413,
                "detail": BodyTooLarge(cap).detail,
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _CountedRequest:
    """One request without a declared length: counts its body as the app reads it."""

    def __init__(self, limit: BodySizeLimit, receive: Receive, send: Send, cap: int):
        self.limit, self._receive, self._send = limit, receive, send
        self.cap = cap
        self.seen = 0
        self.started = False
        self.drained = True

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.cap:
                if message.get("more_body", False):
                    self.drained = await self.limit.drain_rest(self._receive)
                raise BodyTooLarge(self.cap)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if not self.drained:  # the app answered the error itself: close behind it
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
        await self._send(message)
