"""The `batch-api` scenario: an OpenAI batch input file through `POST /v1/files` and
`POST /v1/batches`, timed from the create request to every job stored and queued.

No worker runs during it: the jobs are counted in the database and their messages in Redis,
then cancelled in the bench's own database so no later phase (or sweeper) runs them. The API's
peak RSS is sampled while the file uploads and while the batch is created.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import redis
from sqlalchemy import func, select, update

from bench.config import BENCH_MAX_TOKENS, BENCH_MODEL
from bench.context import Bench
from bench.http import prompt
from bench.measure import CpuMeter, MemorySampler, mib
from bench.procs import BenchError, tree_rss_kib
from models.jobs import CANCELLED, QUEUED, Job
from models.queue import BATCH_QUEUE_BY_KIND

#: a create of 50,000 lines may take this long before the phase is called failed
CREATE_TIMEOUT_S = 600.0
#: warm-up batches (one per fresh connection, so every API process gets some) and their size
WARM_UP_BATCHES = 4
WARM_UP_LINES = 20


def write_input(path: Path, lines: int, tag: str = "batch-api") -> int:
    """A `/v1/chat/completions` batch file of `lines` requests; returns its size in bytes."""
    with path.open("w") as out:
        for index in range(lines):
            body = {
                "model": BENCH_MODEL,
                "messages": [{"role": "user", "content": prompt(index, tag)}],
                "max_tokens": BENCH_MAX_TOKENS,
            }
            line = {"custom_id": f"line-{index}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")
    return path.stat().st_size


def batch_api(bench: Bench) -> dict:
    """Upload, create, check every job queued; jobs/s of the create and the API's peak RSS."""
    lines = bench.config.batch_lines
    _key_id, secret = bench.new_key("batch-api")
    source = bench.fleet.log_dir / "batch-api-input.jsonl"
    size = write_input(source, lines)
    api, pid = bench.api(), bench.api_pid()
    headers = {"Authorization": f"Bearer {secret}"}
    _warm_up(bench, api, headers)
    rest_kib = tree_rss_kib(pid)[0]
    with httpx.Client(base_url=api, headers=headers, timeout=CREATE_TIMEOUT_S) as client:
        with MemorySampler({"api": pid}) as upload_memory:
            clock = time.perf_counter()
            file_id = _upload(client, source)
            upload_s = time.perf_counter() - clock
        with bench.phase(f"batch-api: create a batch of {lines} lines", lines) as tracker:
            with MemorySampler({"api": pid}) as memory, CpuMeter({"api": [pid]}) as cpu:
                clock = time.perf_counter()
                batch = _create(client, file_id)
                create_s = time.perf_counter() - clock
            tracker.set(lines)
        queued = _queued(bench, batch["id"])
        client.delete(f"/v1/files/{file_id}")
    _retire(bench, batch["id"])
    if batch["status"] != "in_progress" or queued["jobs"] != lines:
        raise BenchError(f"batch {batch['status']}: {queued['jobs']} of {lines} jobs stored")
    return {
        "lines": lines,
        "file_mib": mib(size // 1024),
        "upload_s": round(upload_s, 2),
        "create_s": round(create_s, 2),
        "jobs_per_s": round(lines / create_s, 1),
        "messages_queued": queued["messages"],
        "cpu_ms_per_job": cpu.per_job_ms(lines),
        "machine_busy_cores": cpu.busy_cores,
        "api_rss_mib_at_rest": mib(rest_kib),
        "api_peak_rss_mib_upload": mib(upload_memory.peak_kib["api"]),
        "api_peak_rss_mib_create": mib(memory.peak_kib["api"]),
        "api_processes": tree_rss_kib(pid)[1],
    }


def _upload(client: httpx.Client, source: Path) -> str:
    with source.open("rb") as handle:
        answer = client.post("/v1/files", files={"file": handle}, data={"purpose": "batch"})
    _check(answer, "upload")
    return answer.json()["id"]


def _create(client: httpx.Client, file_id: str) -> dict:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    answer = client.post("/v1/batches", json={**body, "completion_window": "24h"})
    _check(answer, "create")
    return answer.json()


def _warm_up(bench: Bench, api: str, headers: dict[str, str]) -> None:
    """Small batches on fresh connections, so each API process has loaded its encodings and
    opened its pools before the timed one."""
    source = bench.fleet.log_dir / "batch-api-warm-up.jsonl"
    write_input(source, WARM_UP_LINES, tag="warm-up")
    for _ in range(WARM_UP_BATCHES):
        with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
            batch = _create(client, _upload(client, source))
            _retire(bench, batch["id"])


def _check(answer: httpx.Response, what: str) -> None:
    if answer.status_code != 200:
        raise BenchError(f"batch-api {what}: HTTP {answer.status_code} {answer.text[:200]}")


def _queued(bench: Bench, batch_id: str) -> dict:
    """The batch's jobs stored as queued, and the messages waiting in Redis."""
    jobs = Job.__table__.c
    with bench.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).where(jobs.batch_id == batch_id, jobs.status == QUEUED)
        ).scalar_one()
    waiting = redis.Redis.from_url(bench.config.redis_url).llen(BATCH_QUEUE_BY_KIND["text"])
    return {"jobs": count, "messages": waiting}


def _retire(bench: Bench, batch_id: str) -> None:
    """The measured jobs must never run: drop their messages, mark them cancelled."""
    redis.Redis.from_url(bench.config.redis_url).delete(BATCH_QUEUE_BY_KIND["text"])
    jobs = Job.__table__
    with bench.engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.batch_id == batch_id, jobs.c.status == QUEUED)
            .values(status=CANCELLED, reserved_usd=0)
        )
