"""One benchmark run's shared state: its database, Redis, child processes and progress display."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
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

from bench.config import BENCH_OPENAI_KEY, BenchConfig, phase_timeout
from bench.http import job_body, submit_closed_loop
from bench.measure import wait_jobs
from bench.procs import (
    BenchError,
    Child,
    Fleet,
    control_app,
    hostname,
    wait_http,
    wait_ready,
)
from models.db import get_engine, session_scope
from models.keys import create_key
from models.migrate import upgrade
from models.queue import TEXT_QUEUE

#: genq workers first consume this empty queue; releasing them onto `text` starts all at once
HOLD_QUEUE = "genq-bench-hold"
#: `genq worker` options besides concurrency and queues; mingle only syncs state at start-up
WORKER_FLAGS = ("--without-mingle",)


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
        # the batch-api scenario's uploads, beside the run's results (deleted after use)
        "GENQ_FILES_DIR": str(config.output_dir.resolve() / "files"),
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
    node_prefix: str = field(init=False)
    engine: Engine = field(init=False)
    sims: dict[int, tuple[str, Child]] = field(default_factory=dict)
    api_child: tuple[str, Child] | None = None
    #: seconds spent on each phase and start-up, written to the JSON file
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        #: unique per run, so a stray worker of another run can never answer for one of ours
        self.node_prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.control = control_app(self.config.redis_url)
        self.engine = get_engine(self.database_url)

    def simulator(self, latency_ms: int) -> str:
        """The `genq simulator` with this latency (one per latency, started on first use)."""
        if latency_ms not in self.sims:
            self.sims[latency_ms] = self.fleet.simulator(latency_ms)
        return self.sims[latency_ms][0]

    def simulator_pid(self, latency_ms: int) -> int:
        self.simulator(latency_ms)
        return self.sims[latency_ms][1].pid

    def start_services(self, latencies: set[int]) -> None:
        """The simulators and the API, started together (each takes seconds to import)."""
        clock = time.perf_counter()
        probes = []
        for latency_ms in sorted(latencies - set(self.sims)):
            self.sims[latency_ms] = self.fleet.simulator(latency_ms, wait=False)
            probes.append((f"{self.sims[latency_ms][0]}/v1/models", self.sims[latency_ms][1]))
        if self.api_child is None:
            self.api_child = self.fleet.api(workers=self.config.api_workers, wait=False)
            probes.append((f"{self.api_child[0]}/readyz", self.api_child[1]))
        for url, child in probes:
            wait_http(url, child)
        self.timings["start simulators and API"] = round(time.perf_counter() - clock, 1)

    def api(self) -> str:
        """The `genq api` of this run (started on first use)."""
        if self.api_child is None:
            self.api_child = self.fleet.api(workers=self.config.api_workers)
        return self.api_child[0]

    def api_pid(self) -> int:
        self.api()
        assert self.api_child is not None
        return self.api_child[1].pid

    def new_key(self, name: str) -> tuple[str, str]:
        """A key per phase, so each phase's jobs are counted apart: (key id, secret)."""
        with session_scope(self.engine) as session:
            key, secret = create_key(session, name=f"bench-{name}")
        return key.id, secret

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Tracker]:
        """A progress bar for one phase; its duration goes into `timings`."""
        task = self.progress.add_task(description, total=total)
        clock = time.perf_counter()
        try:
            yield Tracker(self.progress, task)
        finally:
            self.progress.stop_task(task)
            self.timings[description] = round(time.perf_counter() - clock, 1)

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
                f"{self.node_prefix}-{tag}-{i}@%h",
                "--concurrency",
                str(concurrency),
                "-Q",
                HOLD_QUEUE,
                *(("--pool", self.config.pool) if self.config.pool else ()),
                *WORKER_FLAGS,
                env={"OPENAI_BASE_URL": f"{sim_url}/v1"},
            )
            for i in range(count)
        ]
        try:
            clock = time.perf_counter()
            wait_ready(self.control, self._node_names(children), children)
            self.timings[f"start {count} worker(s) {tag}"] = round(time.perf_counter() - clock, 1)
            yield children
        finally:
            clock = time.perf_counter()
            self.fleet.stop_many(children)
            self.timings[f"stop {count} worker(s) {tag}"] = round(time.perf_counter() - clock, 1)

    def _node_names(self, children: list[Child]) -> list[str]:
        """Celery node names of this run's workers (`worker-TAG-i` runs as `PREFIX-TAG-i@host`)."""
        return [hostname(c.name.replace("worker", self.node_prefix, 1)) for c in children]

    def release(self, children: list[Child]) -> None:
        """Point every held worker at the `text` queue at once."""
        names = self._node_names(children)
        replies = self.control.control.add_consumer(
            TEXT_QUEUE,
            exchange=TEXT_QUEUE,
            routing_key=TEXT_QUEUE,
            destination=names,
            reply=True,
            timeout=5,
        )
        _check_replies(replies, names, "start consuming")

    def hold(self, children: list[Child]) -> None:
        """Stop the workers taking from `text` again (they finish what they hold)."""
        names = self._node_names(children)
        replies = self.control.control.cancel_consumer(
            TEXT_QUEUE, destination=names, reply=True, timeout=5
        )
        _check_replies(replies, names, "stop consuming")

    def warm_up(self, children: list[Child], threads: int, latency_ms: int) -> None:
        """One wave of jobs through fresh workers, so one-time costs stay out of timings.

        A worker's first jobs load token encodings and open SDK and database connections;
        inside a measured window of a few seconds that would read as lost throughput.
        """
        jobs = threads * len(children)
        key_id, secret = self.new_key("warm-up")
        bodies = [job_body(i, "warm-up") for i in range(jobs)]
        asyncio.run(submit_closed_loop(self.api(), secret, bodies, clients=min(jobs, 16)))
        self.release(children)
        wait_jobs(
            self.engine,
            key_id,
            jobs,
            timeout_s=phase_timeout(jobs, jobs, latency_ms),
            children=children,
        )
        self.hold(children)


def _check_replies(replies: list[dict] | None, names: list[str], what: str) -> None:
    answered = {name for reply in replies or [] for name in reply}
    if answered != set(names):
        raise BenchError(f"workers {sorted(set(names) - answered)} did not {what}")
