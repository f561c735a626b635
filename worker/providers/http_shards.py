"""Many connection pools behind one SDK client, so a thousand calls in flight stay cheap.

The openai SDK's HTTP client (httpx2 over httpcore2) keeps one connection pool per client, and the
pool walks every connection it holds each time a request starts and each time a response is closed
(expiry checks, a socket probe per idle connection). With C calls in flight that is O(C) work per
call: at C = 1000 it was a quarter of a worker's CPU (py-spy, issue 17). This transport splits the
connections into shards of `shard_size`: a request goes to the first shard with a free slot (a new
shard is opened when all are busy), so each pass walks at most `shard_size` connections. Shards
keep their idle connections (up to `shard_size` each) instead of the SDK's 100 for the whole
client, so a burst does not close and reopen hundreds of connections.
"""

from __future__ import annotations

import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator

import httpx2
import openai

#: connections per pool; small enough that a pool's walk is cheap, large enough to reuse them
SHARD_SIZE = 32
#: seconds an idle connection is kept: under the 5 s after which uvicorn (what vLLM, LiteLLM's
#: proxy and `genq simulator` serve with) and Node close one. At the SDK's own 5 s both ends let
#: go at the same instant, and a call sent on a connection the server is closing fails as a
#: connection error: a retry, a failure counted against the model's health (seen in the in-flight
#: wave: 1-4 of 1,000 calls in 4 of 36 runs). A server that closes sooner is caught by httpcore's
#: check that an idle connection's socket is not readable (the server's FIN) before reusing it.
KEEPALIVE_EXPIRY_S = 4.0


class _Shard:
    def __init__(self, transport: httpx2.HTTPTransport):
        self.transport = transport
        self.busy = 0


class _Released(httpx2.SyncByteStream):
    """A response body that gives its shard's slot back once, when it is closed."""

    def __init__(self, stream: httpx2.SyncByteStream, release: Callable[[], None]):
        self._stream, self._release = stream, release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class ShardedTransport(httpx2.BaseTransport):
    """An httpx2 transport that spreads requests over pools of at most `shard_size` connections."""

    def __init__(self, *, shard_size: int = SHARD_SIZE, verify: ssl.SSLContext | None = None):
        self.shard_size = shard_size
        #: one TLS context for every shard (building one loads the CA bundle: slow, and memory)
        self._ssl = verify or httpx2.create_ssl_context()
        self._limits = httpx2.Limits(
            max_connections=shard_size,
            max_keepalive_connections=shard_size,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        self._shards: list[_Shard] = []
        self._lock = threading.Lock()

    @property
    def shards(self) -> int:
        return len(self._shards)

    def _checkout(self) -> _Shard:
        with self._lock:
            shard = next((s for s in self._shards if s.busy < self.shard_size), None)
            if shard is None:
                shard = _Shard(httpx2.HTTPTransport(verify=self._ssl, limits=self._limits))
                self._shards.append(shard)
            shard.busy += 1
            return shard

    def _checkin(self, shard: _Shard) -> None:
        with self._lock:
            shard.busy -= 1

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        shard = self._checkout()
        try:
            response = shard.transport.handle_request(request)
        except BaseException:
            self._checkin(shard)
            raise
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Released(response.stream, lambda: self._checkin(shard)),
            extensions=response.extensions,
        )

    def close(self) -> None:
        with self._lock:
            shards, self._shards = self._shards, []
        for shard in shards:
            shard.transport.close()


def sharded_http_client() -> httpx2.Client | None:
    """The SDK's client with sharded pools; None (the SDK's own client) when the environment
    names a proxy, which only the SDK's default transport reads."""
    if urllib.request.getproxies():
        return None
    return openai.DefaultHttpxClient(transport=ShardedTransport())
