"""One benchmark run's shared state: its database, Redis, child processes and progress display."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa
from celery import Celery
from rich.progress import Progress, TaskID
from sqlalchemy.engine import Engine

from bench.config import BENCH_OPENAI_KEY, BenchConfig
from bench.procs import BenchError, Child, Fleet, control_app, hostname, wait_ready
from models.db import get_engine, session_scope
from models.keys import create_key
from models.migrate import upgrade
from models.queue import TEXT_QUEUE

#: genq workers first consume this empty queue; releasing them onto `text` starts all at once
HOLD_QUEUE = "genq-bench-hold"


@contextmanager
def bench_database(config: BenchConfig) -> Iterator[str]:
    """A migrated database for this run: the given one, or a fresh one dropped at the end."""
    if config.database_url:
        upgrade(config.database_url)
        yield config.database_url
    elif config.database == "sqlite":
        with tempfile.TemporaryDirectory(prefix="genq-bench-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            upgrade(url)
            yield url
            get_engine(url).dispose()
    else:
        yield from _postgres_database(config.pg_admin_url)


def _postgres_database(admin_url: str) -> Iterator[str]:
    name = f"genq_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def child_env(config: BenchConfig, database_url: str) -> dict[str, str]:
    """Every genq child's environment: this run's services, never the caller's GENQ_/OPENAI_."""
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_", "CELERY_"))
    }
    env = {
        **inherited,
        "GENQ_DATABASE_URL": database_url,
        "GENQ_REDIS_URL": config.redis_url,
        "GENQ_PROVIDER": "openai",
        "OPENAI_API_KEY": BENCH_OPENAI_KEY,
    }
    if config.tiktoken_dir:
        env["GENQ_TIKTOKEN_CACHE_DIR"] = str(config.tiktoken_dir)
    return {**env, **config.extra_env}


class Tracker:
    """One progress bar: a phase of the run with a known number of steps."""

    def __init__(self, progress: Progress, task: TaskID):
        self.progress, self.task = progress, task

    def advance(self, steps: int = 1) -> None:
        self.progress.advance(self.task, steps)

    def set(self, completed: int) -> None:
        self.progress.update(self.task, completed=completed)


@dataclass
class Bench:
    config: BenchConfig
    database_url: str
    fleet: Fleet
    progress: Progress
    control: Celery = field(init=False)
    engine: Engine = field(init=False)
    sims: dict[int, str] = field(default_factory=dict)
    api_url: str | None = None

    def __post_init__(self) -> None:
        self.control = control_app(self.config.redis_url)
        self.engine = get_engine(self.database_url)

    def simulator(self, latency_ms: int) -> str:
        """The `genq simulator` with this latency (one per latency, started on first use)."""
        if latency_ms not in self.sims:
            self.sims[latency_ms] = self.fleet.simulator(latency_ms)
        return self.sims[latency_ms]

    def api(self) -> str:
        if self.api_url is None:
            self.api_url = self.fleet.api()
        return self.api_url

    def new_key(self, name: str) -> tuple[str, str]:
        """A key per phase, so each phase's jobs are counted apart: (key id, secret)."""
        with session_scope(self.engine) as session:
            key, secret = create_key(session, name=f"bench-{name}")
        return key.id, secret

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Tracker]:
        task = self.progress.add_task(description, total=total)
        try:
            yield Tracker(self.progress, task)
        finally:
            self.progress.stop_task(task)

    def drop_queues(self) -> None:
        """Forget queued messages (the enqueue phase's jobs must never run)."""
        redis.Redis.from_url(self.config.redis_url).delete(TEXT_QUEUE, HOLD_QUEUE)

    @contextmanager
    def workers(
        self, count: int, concurrency: int, sim_url: str, tag: str
    ) -> Iterator[list[Child]]:
        """`genq worker` processes on the hold queue, ready; stopped by PID afterwards."""
        children = [
            self.fleet.genq(
                f"worker-{tag}-{i}",
                "worker",
                "--hostname",
                f"bench-{tag}-{i}@%h",
                "--concurrency",
                str(concurrency),
                "-Q",
                HOLD_QUEUE,
                env={"OPENAI_BASE_URL": f"{sim_url}/v1"},
            )
            for i in range(count)
        ]
        try:
            wait_ready(self.control, [hostname(f"bench-{tag}-{i}") for i in range(count)], children)
            yield children
        finally:
            for child in children:
                self.fleet.stop(child)

    def release(self, children: list[Child]) -> None:
        """Point every held worker at the `text` queue at once."""
        names = [hostname(c.name.replace("worker-", "bench-", 1)) for c in children]
        replies = self.control.control.add_consumer(
            TEXT_QUEUE,
            exchange=TEXT_QUEUE,
            routing_key=TEXT_QUEUE,
            destination=names,
            reply=True,
            timeout=5,
        )
        answered = {name for reply in replies or [] for name in reply}
        if answered != set(names):
            raise BenchError(f"workers {sorted(set(names) - answered)} did not start consuming")
