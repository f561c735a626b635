"""A refused body's 413 reaches a plain HTTP client that sends 64 MiB in one go (`genq api`)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import auth, new_key

pytestmark = [
    pytest.mark.e2e,
    # the limit is the API's, before any database work: one database is enough
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]
BODY = b"x" * (64 * 1024 * 1024)
PROBLEM = "application/problem+json"


def peak_rss_kib(pid: int) -> int:
    """The process's high-water resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def assert_413(status: int, content_type: str | None, body: bytes) -> None:
    assert status == 413
    assert (content_type or "").startswith(PROBLEM)
    problem = json.loads(body)
    assert problem["status"] == 413 and "GENQ_MAX_BODY_BYTES" in problem["detail"]


def post_http_client(url: str, headers: dict[str, str], body: bytes | Iterator[bytes]) -> None:
    """http.client writes the whole body before it reads the answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        chunked = not isinstance(body, bytes)
        conn.request("POST", "/v1/jobs", body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        assert_413(response.status, response.getheader("content-type"), response.read())
    finally:
        conn.close()


def post_urllib(url: str, headers: dict[str, str], body: bytes) -> None:
    """urllib also asks for `Connection: close`."""
    request = urllib.request.Request(f"{url}/v1/jobs", data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert_413(refused.value.code, refused.value.headers.get("content-type"), refused.value.read())


def chunks() -> Iterator[bytes]:
    for start in range(0, len(BODY), 1 << 20):
        yield BODY[start : start + (1 << 20)]


def test_64_mib_body_gets_the_413_every_time(stack, settings):
    # Given the real API process and a key
    url = stack.api()
    secret = new_key(settings.database_url)
    headers = {**auth(secret), "Content-Type": "application/json"}
    close = {**headers, "Connection": "close"}
    pid = stack.procs["api"].pid
    before = peak_rss_kib(pid)
    # When a 64 MiB body is sent in one go, three times by each kind of plain client
    for _ in range(3):
        post_http_client(url, headers, BODY)
        post_http_client(url, close, BODY)
        post_urllib(url, headers, BODY)
        post_http_client(url, close, chunks())
    # Then each got the 413 problem (asserted as they went), nothing was stored, and the API
    # never held a body in memory
    jobs = httpx.get(f"{url}/v1/jobs", headers=auth(secret), timeout=10).json()
    assert jobs["data"] == []
    assert peak_rss_kib(pid) - before < 32 * 1024
