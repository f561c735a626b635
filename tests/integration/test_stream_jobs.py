"""Stream jobs in-process on SQLite and PostgreSQL with real Redis: submit over HTTP (ASGI), the
Runner with the offline simulator streaming, the events read back with `httpx_sse`."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from api.events import Feed, StreamSlots
from api.main import create_app
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope, utcnow
from models.job_events import Position, decode, stream_key
from models.jobs import Job, finish_job
from models.keys import create_key
from models.lifecycle import cancel_job, reclaim_expired
from models.tokens import count_text
from tests.helpers import free_port, new_key, start_redis_server, text_of
from worker.moderation import ModerationConfig
from worker.providers.offline import OfflineProvider
from worker.providers.openai_provider import OpenAIProvider
from worker.providers.simulator import Simulator
from worker.retry import RetryPolicy
from worker.runner import Runner
from worker.streaming import EventLog, Streaming


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def key(settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings.database_url)}"}


@pytest.fixture
def store(settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def runner(settings, simulator: Simulator, store: redis.Redis) -> Runner:
    engine = get_engine(settings.database_url)
    provider = OfflineProvider(simulator, get_catalogue())
    return Runner(
        engine=engine,
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=3, initial_s=0.0, max_s=0.0),
        sleep=lambda _s: None,
        moderation=ModerationConfig(),
        streaming=Streaming(
            provider=provider, engine=engine, events=EventLog(client=store), flush_s=0.0
        ),
    )


def submit(client, key, **body) -> str:
    body = {"kind": "text", "prompt": "Write about rivers", **body}
    answer = client.post("/v1/jobs", json=body, headers=key)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def entries(store: redis.Redis, job_id: str) -> list[tuple[str, dict]]:
    return [decode(fields) for _id, fields in store.xrange(stream_key(job_id))]


def events(client, key, job_id: str) -> list:
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=key) as source:
        return list(source.iter_sse())


def test_a_stream_jobs_events_make_its_text_and_a_plain_job_writes_none(
    client, key, settings, store
):
    # Given a stream job and a plain one
    streamed = submit(client, key, stream=True, params={"max_tokens": 30})
    plain = submit(client, key, params={"max_tokens": 30})
    work = runner(settings, Simulator(latency_ms=60), store)
    # When both run
    assert work.run(streamed) == work.run(plain) == "succeeded"
    # Then the stream job's entries are status, its deltas, then end; the plain job has none
    written = entries(store, streamed)
    assert written[0] == ("status", {"status": "running"})
    assert written[-1] == ("end", {"outcome": "succeeded"})
    assert len([e for e in written if e[0] == "delta"]) > 3  # word by word, as they came
    assert 0 < store.ttl(stream_key(streamed)) <= settings.stream_ttl_s
    assert not store.exists(stream_key(plain))
    # and the events route replays them: the deltas are the stored text, each id once
    shown = client.get(f"/v1/jobs/{streamed}", headers=key).json()
    seen = events(client, key, streamed)
    text = "".join(e.json()["text"] for e in seen if e.event == "delta")
    assert text == shown["output"]["text"] != ""
    assert seen[-1].event == "done" and seen[-1].json() == shown
    assert len({e.id for e in seen}) == len(seen)
    assert [e.event for e in events(client, key, plain)] == ["status", "done"]


def test_a_failed_attempt_is_followed_by_a_retry_event(client, key, settings, store):
    simulator = Simulator()
    simulator.script.append(503)  # the first call fails before it streams anything
    job_id = submit(client, key, stream=True, params={"max_tokens": 10})
    assert runner(settings, simulator, store).run(job_id) == "succeeded"
    kinds = [event for event, _ in entries(store, job_id)]
    assert kinds[:3] == ["status", "status", "retry"]
    retry = next(data for event, data in entries(store, job_id) if event == "retry")
    assert retry == {
        "attempt": 2,
        "model": client.get(f"/v1/jobs/{job_id}", headers=key).json()["model"],
    }


class Killed(BaseException):
    """The worker process dies: nothing of the run is recorded, nothing catches it."""


class MidStream(OfflineProvider):
    """The offline provider, which calls `then` once `deltas` pieces went out (a worker
    killed there, a cancel requested there)."""

    def __init__(self, simulator: Simulator, *, deltas: int, then: Callable[[], None]):
        super().__init__(simulator, get_catalogue())
        self.deltas, self.then = deltas, then

    def generate_text_stream(self, *, model, messages, params, on_delta):
        sent = []

        def hooked(text: str) -> None:
            on_delta(text)
            sent.append(text)
            if len(sent) == self.deltas:
                self.then()

        return super().generate_text_stream(
            model=model, messages=messages, params=params, on_delta=hooked
        )


def killed() -> None:
    raise Killed


def test_a_run_reclaimed_after_its_worker_died_mid_stream_starts_its_text_over(
    client, key, settings, store
):
    # Given a stream job whose first run's worker died mid-stream (deltas out, no attempt)
    job_id = submit(client, key, stream=True, params={"max_tokens": 30})
    dead = runner(settings, Simulator(latency_ms=0), store)
    dead.provider = dead.streaming.provider = MidStream(Simulator(), deltas=3, then=killed)
    with pytest.raises(Killed):
        dead.run(job_id)
    assert [event for event, _ in entries(store, job_id)] == ["status", "delta", "delta", "delta"]
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:  # its lease ran out: the sweeper requeues it
        assert [due[0] for due in reclaim_expired(session, now=utcnow() + timedelta(hours=1))] == [
            job_id
        ]
    # When another worker runs it in full (attempt 1 again: the dead run recorded none)
    assert runner(settings, Simulator(latency_ms=0), store).run(job_id) == "succeeded"
    # Then a subscriber is told to drop the dead run's text, and shows exactly the stored text
    shown = client.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert [a["number"] for a in shown["attempt_log"]] == [1]
    seen = events(client, key, job_id)
    assert [e.json() for e in seen if e.event == "retry"] == [
        {"attempt": 1, "model": shown["model"]}
    ]
    assert text_of(seen) == shown["output"]["text"] != ""
    # and a first run with no text before it writes no retry
    fresh = submit(client, key, stream=True, params={"max_tokens": 5})
    assert runner(settings, Simulator(latency_ms=0), store).run(fresh) == "succeeded"
    assert "retry" not in [event for event, _ in entries(store, fresh)]


def test_a_cancel_mid_stream_bills_the_prompt_and_the_text_so_far(client, key, settings, store):
    # Given a stream job cancelled (over the API) once 3 pieces of its text went out
    job_id = submit(client, key, stream=True, params={"max_tokens": 40})
    work = runner(settings, Simulator(latency_ms=0), store)

    def cancel() -> None:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=key).raise_for_status()

    work.provider = work.streaming.provider = MidStream(Simulator(), deltas=3, then=cancel)
    work.streaming.cancel_check_s = 0.0
    # When it runs
    assert work.run(job_id) == "cancelled"
    # Then its one attempt, stopped before any usage came, is billed its prompt and 3 pieces
    shown = client.get(f"/v1/jobs/{job_id}", headers=key).json()
    [attempt] = shown["attempt_log"]
    assert attempt["outcome"] == "cancelled" and attempt["prompt_tokens"] > 0
    sent = "".join(data["text"] for event, data in entries(store, job_id) if event == "delta")
    # (the piece whose delivery found the cancel was received, and billed, not published)
    assert 0 < count_text(sent, "o200k_base") <= attempt["completion_tokens"] < 40
    assert Decimal(str(attempt["cost_usd"])) > 0
    assert Decimal(str(shown["cost_usd"])) == Decimal(str(attempt["cost_usd"]))


@pytest.mark.parametrize(("flagged", "outcome"), [("", "succeeded"), ("synthetic", "failed")])
def test_moderation_block_holds_the_text_until_it_passed(
    client, key, settings, store, flagged, outcome
):
    # Given a `block` stream job (the offline answer starts with `[synthetic]`)
    simulator = Simulator.from_spec(latency_ms=0, faults="", flagged_words=flagged)
    job_id = submit(
        client, key, stream=True, params={"max_tokens": 20}, policy={"moderation": "block"}
    )
    # When it runs
    assert runner(settings, simulator, store).run(job_id) == outcome
    # Then no text went out before the check: one delta after it passed, none when blocked
    written = entries(store, job_id)
    deltas = [data["text"] for event, data in written if event == "delta"]
    shown = client.get(f"/v1/jobs/{job_id}", headers=key).json()
    if outcome == "succeeded":
        assert deltas == [shown["output"]["text"]] and written[-2][0] == "delta"
    else:
        assert deltas == [] and shown["error"]["type"] == "moderation_blocked"
    assert written[-1] == ("end", {"outcome": outcome})


def test_stream_on_an_image_job_is_refused(client, key):
    answer = client.post(
        "/v1/jobs", json={"kind": "image", "prompt": "a fox", "stream": True}, headers=key
    )
    assert answer.status_code == 422
    assert "`stream` is for text jobs" in answer.json()["detail"]


def test_without_redis_the_events_route_answers_503_at_once(settings, key):
    # Given an API whose Redis does not answer (nothing listens on the port)
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as client:
        job_id = submit(client, key, stream=True)  # stored; published later by the sweeper
        answer = client.get(f"/v1/jobs/{job_id}/events", headers=key)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "5"


def test_a_queued_stream_job_cancelled_elsewhere_ends_its_stream_at_once(settings, key):
    # Given a stream job no worker runs, and a client reading its events
    fast = settings.model_copy(update={"sse_poll_s": 0.2})
    with TestClient(create_app(fast)) as client:
        job_id = submit(client, key, stream=True)
        shown = client.get(f"/v1/jobs/{job_id}", headers=key).json()
        assert shown["status"] == "queued"

        def cancel_soon() -> None:
            time.sleep(0.5)
            with session_scope(get_engine(settings.database_url)) as session:
                job = session.get(Job, job_id)
                cancel_job(session, job_id=job_id, key_id=job.key_id)

        # When it is cancelled by a path that writes no event (the API's cancel of a queued job)
        canceller = threading.Thread(target=cancel_soon)
        started = time.monotonic()
        canceller.start()
        seen = events(client, key, job_id)
        canceller.join()
    # Then the stream ends with done (cancelled) within a tick, without waiting for a worker
    assert [(e.event, e.json().get("status")) for e in seen] == [
        ("status", "queued"),
        ("status", "cancelled"),
        ("done", "cancelled"),
    ]
    assert time.monotonic() - started < 1.5


def test_an_event_stream_outlives_its_redis_and_still_ends_with_done(database_url):
    # Given a running stream job and a client following it through a Redis of its own
    engine = get_engine(database_url)
    with session_scope(engine) as session:
        key, _ = create_key(session, name="feed")
        job = Job(key_id=key.id, kind="text", model="gpt-4o-mini", status="running")
        job.request = {"kind": "text", "prompt": "hi", "stream": True}
        session.add(job)
    job_id, key_id = job.id, key.id
    port = free_port()
    server = start_redis_server(port)
    client = aioredis.Redis(port=port, decode_responses=True, socket_timeout=3)
    slots = StreamSlots(client, limit=5)

    async def follow() -> list:
        feed = Feed(
            client=client,
            engine=engine,
            slots=slots,
            slot=await slots.acquire(key_id),
            job_id=job_id,
            key_id=key_id,
            stream=True,
            position=Position(),
            poll_s=0.2,
        )
        events = feed.events()
        seen = [await anext(events)]  # the status the database shows
        # When Redis dies, and then the job ends
        server.terminate()
        server.wait(timeout=10)
        with session_scope(engine) as session:
            finish_job(session, job=session.get(Job, job_id), status="succeeded")
        with anyio.fail_after(10):  # Then the stream ends with done, it does not hang
            seen += [event async for event in events]
        return seen

    try:
        seen = anyio.run(follow)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)
    assert [(e.event, json.loads(e.data).get("status")) for e in seen] == [
        ("status", "running"),
        ("status", "succeeded"),
        ("done", "succeeded"),
    ]


def test_a_client_gone_before_its_stream_started_frees_its_slot(client, key, settings, store):
    # Given a job, and a client whose connection drops as the answer starts, before any event
    job_id = submit(client, key, stream=True)
    with session_scope(get_engine(settings.database_url)) as session:
        slots = StreamSlots._key(session.get(Job, job_id).key_id)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/jobs/{job_id}/events",
        "raw_path": f"/v1/jobs/{job_id}/events".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", key["Authorization"].encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def leave_at_once() -> list[int]:
        started, statuses = anyio.Event(), []
        request = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if request:
                return request.pop()
            await started.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
                started.set()
                await anyio.sleep_forever()  # the client is gone: nothing more goes out

        with anyio.fail_after(10):
            await client.app(scope, receive, send)
        return statuses

    # When the request is over
    assert client.portal.call(leave_at_once) == [200]
    # Then its slot was given back at once (not left to lapse after 30 s)
    assert store.zcard(slots) == 0


#: a model answer streamed with a NUL in its second piece (the stored text has U+FFFD there)
NUL_PIECES = ["Rivers", " run\u0000", " deep"]


class NulAnswer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible `POST /v1/chat/completions` streaming NUL_PIECES as SSE chunks."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
        base["model"] = "gpt-4o-mini"
        choices = [
            [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
            for piece in NUL_PIECES
        ]
        choices.append([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        chunks = [{**base, "choices": c} for c in choices]
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *_args) -> None:
        pass


def test_a_streamed_nul_reaches_the_deltas_as_the_stored_text_has_it(client, key, settings, store):
    # Given a model that streams an answer holding a NUL, called through the openai SDK
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NulAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        provider = OpenAIProvider(
            api_key="sk-test",
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            timeout_s=10,
            catalogue=get_catalogue(),
        )
        work = runner(settings, Simulator(), store)
        work.provider = work.streaming.provider = provider
        job_id = submit(client, key, stream=True, model="gpt-4o-mini")
        # When a worker runs the stream job
        assert work.run(job_id) == "succeeded"
    finally:
        server.shutdown()
        server.server_close()
    # Then the stored text has U+FFFD for the NUL, and the deltas add up to exactly that text
    shown = client.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert shown["output"]["text"] == "Rivers run\ufffd deep"
    deltas = [data["text"] for event, data in entries(store, job_id) if event == "delta"]
    assert "".join(deltas) == shown["output"]["text"]
    streamed = "".join(e.json()["text"] for e in events(client, key, job_id) if e.event == "delta")
    assert streamed == shown["output"]["text"]
