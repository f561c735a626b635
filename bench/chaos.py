"""Chaos run: many jobs, provider faults, and a worker SIGKILLed mid-run; prints the counts.

The same checks as tests/e2e/test_faults.py at a larger scale: every job succeeds exactly once,
no job is billed twice, job costs equal their attempts, and no retry comes before the
Retry-After a 429 asked for. Loopback only: a fresh PostgreSQL database, Redis db 13 (flushed).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections import Counter
from datetime import UTC
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from api.main import create_app
from bench.config import BENCH_OPENAI_KEY
from bench.context import bench_database
from bench.procs import Fleet, free_port, wait_for, wait_http
from models.attempts import Attempt
from models.db import get_engine, session_scope
from models.jobs import FINISHED, Job
from models.keys import create_key
from models.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/13"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: short leases and sweeps so a dead worker's jobs come back within seconds
WORKER_ENV = {
    "GENQ_PROVIDER": "offline",
    "GENQ_OFFLINE_LATENCY_MS": "100",
    "GENQ_OFFLINE_FAULTS": "429:0.2,503:0.05",
    "GENQ_MAX_ATTEMPTS": "15",
    "GENQ_RETRY_INITIAL_S": "0.05",
    "GENQ_RETRY_MAX_S": "0.5",
    "GENQ_LEASE_S": "6",
    "GENQ_SWEEP_INTERVAL_S": "1",
    "GENQ_REDISPATCH_AFTER_S": "10",
}


def _finished(url: str) -> int:
    with session_scope(get_engine(url)) as session:
        return session.exec(
            select(func.count()).select_from(Job).where(Job.status.in_(FINISHED))
        ).one()


def _submit(url: str, tiktoken_dir: Path, jobs: int) -> None:
    settings = Settings(
        _env_file=None, database_url=url, redis_url=REDIS_URL, tiktoken_cache_dir=tiktoken_dir
    )
    with session_scope(get_engine(url)) as session:
        _key, secret = create_key(session, name="chaos")
    with TestClient(create_app(settings)) as client:
        for i in range(jobs):
            client.post(
                "/v1/jobs",
                json={"kind": "text", "prompt": f"chaos job {i}", "params": {"max_tokens": 30}},
                headers={"Authorization": f"Bearer {secret}"},
            ).raise_for_status()


def count(url: str) -> dict:
    """The invariants, as counts (a healthy run has zeros where it says `must be 0`)."""
    with session_scope(get_engine(url)) as session:
        jobs = list(session.exec(select(Job)))
        attempts = list(session.exec(select(Attempt).order_by(Attempt.job_id, Attempt.number)))
    by_job: dict[str, list[Attempt]] = {}
    for row in attempts:
        by_job.setdefault(row.job_id, []).append(row)
    successes = Counter(a.job_id for a in attempts if a.outcome == "succeeded")
    early = sum(
        1
        for rows in by_job.values()
        for a, b in pairwise(rows)
        if a.http_status == 429
        and (b.started_at.replace(tzinfo=UTC) - a.finished_at.replace(tzinfo=UTC)).total_seconds()
        < 0.95
    )
    statuses = Counter(j.status for j in jobs)
    return {
        "jobs": len(jobs),
        "succeeded": statuses["succeeded"],
        "failed": statuses["failed"],
        "attempts": len(attempts),
        "http_429": sum(a.http_status == 429 for a in attempts),
        "http_503": sum(a.http_status == 503 for a in attempts),
        "jobs_billed_twice (must be 0)": sum(n > 1 for n in successes.values()),
        "cost_mismatches (must be 0)": sum(
            j.cost_usd != sum((a.cost_usd for a in by_job.get(j.id, [])), start=0) for j in jobs
        ),
        "retries_before_retry_after (must be 0)": early,
    }


#: the same faults from `genq simulator`, for a run through the openai SDK over HTTP
SIMULATOR_ARGS = ("--latency-ms", "100", "--faults", "429:0.2,503:0.05", "--retry-after", "1")


def _worker(fleet: Fleet, name: str, concurrency: int, env: dict[str, str]):
    args = ("--hostname", f"{name}@%h", "--concurrency", str(concurrency))
    return fleet.genq(name, "worker", *args, env=env)


def _over_http(fleet: Fleet) -> dict[str, str]:
    """Start `genq simulator` with the faults; the workers' environment to call it."""
    port = free_port()
    child = fleet.genq("simulator", "simulator", "--port", str(port), *SIMULATOR_ARGS)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models", child)
    env = {"GENQ_PROVIDER": "openai", "OPENAI_API_KEY": BENCH_OPENAI_KEY}
    return {**env, "OPENAI_BASE_URL": f"{url}/v1"}


def run_chaos(
    *,
    jobs: int = 1000,
    workers: int = 3,
    tiktoken_dir: Path,
    concurrency: int = 8,
    http: bool = False,
) -> dict:
    """Submit `jobs`, SIGKILL one worker at a quarter done, start a replacement, count.

    `http`: the workers call `genq simulator` through the openai SDK instead of the in-process
    offline provider (the path a deployment takes)."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = SimpleNamespace(database_url=None, database="postgres", pg_admin_url=PG_ADMIN_URL)
    with bench_database(config) as url, tempfile.TemporaryDirectory() as logs:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))}
        fleet = Fleet(
            env={
                **env,
                **WORKER_ENV,
                "GENQ_DATABASE_URL": url,
                "GENQ_REDIS_URL": REDIS_URL,
                "GENQ_TIKTOKEN_CACHE_DIR": str(tiktoken_dir),
            },
            log_dir=Path(logs),
        )
        try:
            started = time.perf_counter()
            _submit(url, tiktoken_dir, jobs)  # all queued first, so the kill lands mid-run
            env = _over_http(fleet) if http else {}
            pool = [_worker(fleet, f"w{i}", concurrency, env) for i in range(workers)]
            wait_for(
                lambda: _finished(url) >= jobs // 4,
                what="a quarter of the jobs",
                children=pool,
                timeout_s=600,
            )
            os.kill(pool[0].pid, signal.SIGKILL)
            killed_at = _finished(url)
            pool = [*pool[1:], _worker(fleet, "w-new", concurrency, env)]
            wait_for(
                lambda: _finished(url) >= jobs,
                what="every job to finish",
                children=pool,
                timeout_s=1200,
            )
            summary = {
                "killed_after_finished": killed_at,
                **count(url),
                "seconds": round(time.perf_counter() - started, 1),
            }
        finally:
            fleet.stop_all()
    return summary


def save(summary: dict, results_dir: Path = Path("bench/results")) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"chaos-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
