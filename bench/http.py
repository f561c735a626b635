"""Submitting jobs to the API from the benchmark: a minimal keep-alive HTTP/1.1 client.

On a 2-core machine the load generator shares the CPU with the server it measures. A full client
(httpx) spends about as much CPU per request as the API does; this one writes prebuilt bytes and
reads one `Content-Length` answer, so the submit rate measured is the API's, not the client's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.config import BENCH_MAX_TOKENS, require_loopback


@dataclass(frozen=True, kw_only=True)
class Submitted:
    """One submit as the client saw it: wall-clock send time, answer status, job id."""

    sent_at: float
    status: int
    job_id: str | None
    seconds: float
    #: jobs the answer accepted (a batch accepts many)
    jobs: int = 1


def job_request(index: int, tag: str) -> dict:
    """The request every benchmark job sends: a short text job (same prompt shape as baselines)."""
    return {
        "kind": "text",
        "prompt": prompt(index, tag),
        "params": {"max_tokens": BENCH_MAX_TOKENS},
    }


def job_body(index: int, tag: str) -> bytes:
    return json.dumps(job_request(index, tag)).encode()


def batch_body(indices: range, tag: str) -> bytes:
    """`POST /v1/jobs/batch` carrying the jobs `indices`."""
    return json.dumps({"jobs": [job_request(i, tag) for i in indices]}).encode()


def prompt(index: int, tag: str) -> str:
    """Distinct per job (so replies differ) and the same shape for genq and both baselines."""
    return f"Write a short product line, variant {index} ({tag})"


class Connection:
    """One keep-alive connection to the API; requests on it run one at a time."""

    def __init__(self, base_url: str, secret: str):
        parts = urlsplit(require_loopback(base_url))
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {secret}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body`; (status, answer body). Reconnects when the server closed the connection."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            path.encode(),
            self.head,
            len(body),
            body,
        )
        self.writer.write(request)
        return await self._answer()

    async def _answer(self) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if "content-length" not in headers:
            raise RuntimeError(f"answer without Content-Length (status {status})")
        body = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _submit(conn: Connection, body: bytes, path: str) -> Submitted:
    """One submit; a broken connection counts as status 0 (refused), never as an exception."""
    sent_at, clock = time.time(), time.perf_counter()
    try:
        status, answer = await conn.post(path, body)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        conn.close()
        status, answer = 0, b""
    accepted = json.loads(answer) if status == 202 else {}
    ids = [job["id"] for job in accepted.get("data", [accepted] if accepted else [])]
    return Submitted(
        sent_at=sent_at,
        status=status,
        job_id=ids[0] if ids else None,
        seconds=time.perf_counter() - clock,
        jobs=len(ids),
    )


async def submit_closed_loop(
    api_url: str,
    secret: str,
    bodies: Sequence[bytes],
    *,
    clients: int,
    on_done: Callable[[int], None] = lambda _n: None,
    path: str = "/v1/jobs",
) -> list[Submitted]:
    """Submit every body as fast as `clients` concurrent connections allow."""
    pending = iter(range(len(bodies)))
    results: list[Submitted | None] = [None] * len(bodies)

    async def client() -> None:
        conn = Connection(api_url, secret)
        try:
            for index in pending:
                results[index] = await _submit(conn, bodies[index], path)
                on_done(1)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(min(clients, len(bodies)))))
    return [r for r in results if r is not None]


async def submit_at_rate(
    api_url: str,
    secret: str,
    bodies: Sequence[bytes],
    *,
    rate: float,
    on_done: Callable[[int], None] = lambda _n: None,
) -> list[Submitted]:
    """Open loop: body i is sent at start + i / rate, whatever the earlier answers took."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    opened: list[Connection] = []
    start = time.perf_counter()

    async def one(index: int) -> Submitted:
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        conn = idle.get_nowait() if not idle.empty() else Connection(api_url, secret)
        if conn not in opened:
            opened.append(conn)
        try:
            return await _submit(conn, bodies[index], "/v1/jobs")
        finally:
            idle.put_nowait(conn)
            on_done(1)

    try:
        return list(await asyncio.gather(*(one(i) for i in range(len(bodies)))))
    finally:
        for conn in opened:
            conn.close()
