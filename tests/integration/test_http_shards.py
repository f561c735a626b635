"""The SDK client's sharded connection pools (worker/providers/http_shards.py), through the real
`openai` SDK over HTTP against the simulator served on loopback (uvicorn in a thread)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import httpx2
import pytest
import uvicorn

from models.catalogue import get_catalogue
from models.errors import RetryableProviderError
from models.schemas import TextParams
from tests.helpers import free_port, wait_until
from worker.providers.http_shards import (
    KEEPALIVE_EXPIRY_S,
    SHARD_SIZE,
    ShardedTransport,
    sharded_http_client,
)
from worker.providers.openai_provider import OpenAIProvider
from worker.providers.simulator import Simulator
from worker.simulator_server import create_simulator_app

#: calls at once: more than two shards' worth
CALLS = 2 * SHARD_SIZE + 16


@pytest.fixture
def slow_simulator(tiktoken_dir) -> Iterator[str]:
    """The simulator answering after 1 s, so the calls of a burst overlap (even on a busy box)."""
    with served(create_simulator_app(Simulator(latency_ms=1000), get_catalogue())) as url:
        yield url


@contextmanager
def served(app) -> Iterator[str]:
    """`app` on uvicorn in a thread, with uvicorn's defaults (its keep-alive among them)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=20, what="the server")
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def provider(url: str) -> tuple[OpenAIProvider, ShardedTransport]:
    made = OpenAIProvider(
        api_key="sk-test", base_url=f"{url}/v1", timeout_s=10, catalogue=get_catalogue()
    )
    transport = made.default._client._transport
    assert isinstance(transport, ShardedTransport)
    return made, transport


def ask(p: OpenAIProvider, i: int):
    return p.generate_text(
        model="gpt-4.1-nano",
        messages=[{"role": "user", "content": f"line {i}"}],
        params=TextParams(max_tokens=8),
    )


def busy(transport: ShardedTransport) -> list[int]:
    return [shard.busy for shard in transport._shards]


def test_a_burst_is_spread_over_shards_and_every_slot_comes_back(slow_simulator):
    # Given the provider's SDK client, and more calls at once than two shards hold
    p, transport = provider(slow_simulator)
    with ThreadPoolExecutor(CALLS) as pool:
        results = list(pool.map(lambda i: ask(p, i), range(CALLS)))
    # Then every call was answered, with the calls in flight together at the simulator
    assert all(r.text and r.usage.completion_tokens > 0 for r in results)
    peak = httpx.get(f"{slow_simulator}/_simulator/stats").json()["peak_in_flight"]
    assert peak > SHARD_SIZE  # more than one shard holds
    # And no pool held more than its share: enough shards for the peak, each released
    assert math.ceil(peak / SHARD_SIZE) <= transport.shards <= math.ceil(CALLS / SHARD_SIZE)
    assert set(busy(transport)) == {0}
    # And a second burst reuses the shards (and their connections) instead of opening more
    before = transport.shards
    with ThreadPoolExecutor(SHARD_SIZE) as pool:
        list(pool.map(lambda i: ask(p, i), range(SHARD_SIZE)))
    assert transport.shards == before and set(busy(transport)) == {0}


def test_failed_calls_give_their_slot_back(slow_simulator):
    p, transport = provider(slow_simulator)
    # An error answer (500) and a refused connection both end the call with a retryable error
    httpx.post(f"{slow_simulator}/_simulator/script", json={"statuses": [500]})
    with pytest.raises(RetryableProviderError):
        ask(p, 0)
    unreachable, lost = provider(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryableProviderError) as refused:
        ask(unreachable, 1)
    assert refused.value.kind == "connection_error"
    # And neither keeps a slot
    assert set(busy(transport)) == {0} and set(busy(lost)) == {0}


def test_a_proxy_in_the_environment_keeps_the_sdks_own_client(monkeypatch):
    # Only the SDK's default transport reads proxy variables: genq then leaves it alone
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert sharded_http_client() is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    client = sharded_http_client()
    assert client is not None and isinstance(client._transport, ShardedTransport)


async def client_port_app(scope, receive, send) -> None:
    """An ASGI app answering with the client's port: a new port is a new connection."""
    if scope["type"] != "http":
        return
    body = str(scope["client"][1]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_an_idle_connection_is_dropped_before_uvicorn_would_close_it():
    # Given a server with uvicorn's default keep-alive, and a client on the sharded transport
    assert KEEPALIVE_EXPIRY_S < 4.5 < uvicorn.Config(client_port_app).timeout_keep_alive == 5
    with served(client_port_app) as url, httpx2.Client(transport=ShardedTransport()) as client:
        # When a call follows another at once, and one follows after 4.5 s idle
        first, again = client.get(url).text, client.get(url).text
        time.sleep(4.5)
        later = client.get(url).text
    # Then the first connection was reused at once, and not after 4.5 s: the client let it go
    # before the server would have closed it under a call being sent (a connection error)
    assert first == again != later
