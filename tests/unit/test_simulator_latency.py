"""`genq simulator` answers L after a request arrives: its own work happens inside L, not after."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from models.catalogue import get_catalogue
from worker.providers.simulator import Simulator
from worker.simulator_server import create_simulator_app

LATENCY_MS = 60_000  # never waited: the test records the waits instead
CHAT = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _post(app, path: str, body: dict, auth: bool = True) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            headers = {"Authorization": "Bearer x"} if auth else {}
            return await client.post(path, json=body, headers=headers)

    return asyncio.run(go())


@pytest.fixture
def steps(monkeypatch) -> tuple[Simulator, list]:
    """The simulator's steps in order: its answer being built, and each wait (seconds asked)."""
    simulator = Simulator.from_spec(latency_ms=LATENCY_MS, faults="")
    seen: list = []
    answer = simulator.answer
    monkeypatch.setattr(
        simulator, "answer", lambda *a, **kw: seen.append("answer") or answer(*a, **kw)
    )

    async def no_wait(seconds: float, result=None):
        if seconds:  # the ASGI stack yields with sleep(0) too
            seen.append(seconds)
        return result

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    return simulator, seen


def test_the_reply_is_built_before_the_wait_and_the_wait_is_what_is_left_of_l(steps):
    simulator, seen = steps
    reply = _post(create_simulator_app(simulator, get_catalogue()), "/v1/chat/completions", CHAT)
    assert reply.status_code == 200
    assert reply.json()["object"] == "chat.completion"
    assert seen[0] == "answer"
    assert len(seen) == 2
    # what is left of L after parsing and building the answer
    assert 0 < seen[1] <= LATENCY_MS / 1000


def test_a_scripted_fault_still_waits_l_and_a_bad_request_does_not(steps):
    simulator, seen = steps
    app = create_simulator_app(simulator, get_catalogue())
    simulator.script.extend([503])
    assert _post(app, "/v1/chat/completions", CHAT).status_code == 503
    assert seen and 0 < seen[-1] <= LATENCY_MS / 1000
    seen.clear()
    assert _post(app, "/v1/chat/completions", {"model": "gpt-4.1-nano"}).status_code == 400
    assert _post(app, "/v1/chat/completions", CHAT, auth=False).status_code == 401
    assert seen == []
