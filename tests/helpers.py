"""Factories and in-process fakes shared by the integration and end-to-end tests."""

from __future__ import annotations

import copy
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import redis
import sqlalchemy as sa

from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.errors import ProviderError
from models.jobs import Job
from models.keys import create_key
from models.moderation import Verdict
from models.pricing import Usage
from models.schemas import ImageParams, TextParams
from worker.providers.base import GeneratedImage, ImageResult, TextResult
from worker.providers.simulator import draw_png
from worker.retry import RetryPolicy
from worker.runner import Runner


def new_key(database_url: str, name: str = "test") -> str:
    """Create an API key and return its secret."""
    with session_scope(get_engine(database_url)) as session:
        _key, secret = create_key(session, name=name)
    return secret


def text_job_row(key_id: str, **fields) -> Job:
    """A queued plain text job's row as the API would store it (a haiku, 24 tokens at most), for
    tests that write jobs straight to the database."""
    return Job(
        key_id=key_id,
        kind="text",
        model="gpt-4o-mini",
        request={"kind": "text", "prompt": "Write a haiku", "params": {"max_tokens": 24}},
        routing={"mode": "policy", "fallbacks": []},
        reserved_usd=Decimal("0.0000300000"),
        **fields,
    )


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_start_time(pid: int) -> str | None:
    """A live process's start time in clock ticks (None once it is gone or a zombie): with the
    PID it names one process, not whichever later reuses the number."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else fields[19]


def wait_until(check: Callable[[], object], *, timeout_s: float = 60, what: str = "condition"):
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def redis_answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def start_redis_server(port: int) -> subprocess.Popen:
    """A real redis-server of a test's own on loopback, without persistence, once it answers.

    The caller stops it by PID (terminate + wait)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (apt install redis-server)"
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port, socket_connect_timeout=0.5)
    wait_until(lambda: redis_answers(probe), timeout_s=10, what=f"redis-server on port {port}")
    return proc


@contextmanager
def private_redis() -> Iterator[str]:
    """The URL of a redis-server of the caller's own on a free port, stopped by PID at the end."""
    port = free_port()
    proc = start_redis_server(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def serve_simulator(simulator) -> Iterator[str]:
    """The simulator's OpenAI-compatible HTTP app on loopback (uvicorn in a thread): its URL."""
    import threading

    import uvicorn

    from models.catalogue import get_catalogue
    from worker.simulator_server import create_simulator_app

    port = free_port()
    app = create_simulator_app(simulator, get_catalogue())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=20, what="the simulator")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class FakeProvider:
    """An in-process provider whose outcomes are scripted: a ProviderError to raise, or None."""

    name: str = "fake"
    outcomes: list[ProviderError | None] = field(default_factory=list)
    calls: int = 0
    usage: Usage = field(default_factory=lambda: Usage(prompt_tokens=100, completion_tokens=50))

    def _next(self) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome

    def generate_text(
        self, *, model: str, messages: list[dict[str, str]], params: TextParams
    ) -> TextResult:
        self._next()
        return TextResult(
            text=f"reply to {messages[-1]['content']}", usage=self.usage, finish_reason="stop"
        )

    def generate_image(self, *, model: str, prompt: str, params: ImageParams) -> ImageResult:
        self._next()
        width, height = (int(x) for x in params.size.split("x"))
        images = [
            GeneratedImage(data=draw_png(prompt, width, height, i), width=width, height=height)
            for i in range(params.n)
        ]
        return ImageResult(
            images=images, usage=Usage(images=params.n, size=params.size, quality=params.quality)
        )


@dataclass
class RecordingProvider:
    """The offline simulator in-process, keeping a copy of every chat request it was sent."""

    name: str = "offline"
    sent: list[list[dict]] = field(default_factory=list)
    outcomes: list[ProviderError | None] = field(default_factory=list)
    #: the stand-in moderation's words (as GENQ_OFFLINE_FLAGGED_WORDS), the texts of each
    #: moderation call, its scripted failures, and the image prompts generated
    flagged_words: str = ""
    moderated: list[list[str]] = field(default_factory=list)
    moderation_outcomes: list[ProviderError | None] = field(default_factory=list)
    image_prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from worker.providers.offline import OfflineProvider
        from worker.providers.simulator import Simulator

        self.inner = OfflineProvider(Simulator.from_spec(
            latency_ms=0, faults="", flagged_words=self.flagged_words
        ))  # fmt: skip

    def moderate(self, *, model: str, texts: list[str]) -> Verdict:
        self.moderated.append(list(texts))
        outcome = self.moderation_outcomes.pop(0) if self.moderation_outcomes else None
        if outcome is not None:
            raise outcome
        return self.inner.moderate(model=model, texts=texts)

    def generate_text(self, *, model: str, messages: list[dict], params: TextParams) -> TextResult:
        self.sent.append(copy.deepcopy(messages))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return self.inner.generate_text(model=model, messages=messages, params=params)

    def generate_image(self, *, model: str, prompt: str, params: ImageParams) -> ImageResult:
        self.image_prompts.append(prompt)
        return self.inner.generate_image(model=model, prompt=prompt, params=params)


def quick_runner(database_url: str, provider, *, retry: RetryPolicy | None = None, **options):
    """The Runner of an in-process test on its database: retries are not waited for (three
    attempts unless `retry` says otherwise); other Runner options (publish, moderation) pass."""
    return Runner(
        engine=get_engine(database_url),
        provider=provider,
        catalogue=get_catalogue(),
        retry=retry or RetryPolicy(max_attempts=3, initial_s=0.01, max_s=0.02),
        sleep=lambda _s: None,
        **options,
    )


def genq(*args: str, env: dict[str, str], cwd=None, timeout: float = 120):
    """Run the real `genq` CLI in a child process; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def text_of(events: list) -> str:
    """The text a client shows: deltas, started over at each `retry`."""
    text = ""
    for event in events:
        if event.event == "retry":
            text = ""
        elif event.event == "delta":
            text += event.json()["text"]
    return text


def row_as_text(engine, table: str, column: str, value: str) -> list[str]:
    """Each matching row as PostgreSQL prints it (SQL NULL and JSON null differ), without the
    columns that differ by construction (ids, keys, tokens, clocks)."""
    differ = {"id", "key_id", "job_id", "claim_token", "worker"}
    with engine.connect() as conn:
        names = [
            c["name"]
            for c in sa.inspect(conn).get_columns(table)
            if c["name"] not in differ and not str(c["type"]).startswith("TIMESTAMP")
        ]
        listed = ", ".join(f"{n}::text" for n in names)
        rows = conn.execute(
            sa.text(f"SELECT {listed} FROM {table} WHERE {column} = :v ORDER BY 1"), {"v": value}
        ).all()
    return [dict(zip(names, row, strict=True)) for row in rows]
