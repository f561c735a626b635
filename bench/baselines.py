"""The two baselines every throughput number is compared with, on the same simulator, same run.

(a) the limit: a bare asyncio loop calling the simulator with `openai.AsyncOpenAI`, with the same
    number of calls in flight as genq has threads (no queue, no database);
(b) the naive approach: `bench/naive_app.py`, Celery prefork with default settings and one
    blocking SDK call per task per process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

import openai
import redis
from celery import Celery

from bench.config import (
    BENCH_MAX_TOKENS,
    BENCH_MODEL,
    BENCH_OPENAI_KEY,
    NAIVE_TASK,
    NAIVE_TIMES_KEY,
    phase_timeout,
)
from bench.http import prompt
from bench.measure import CpuMeter, call_spans, mib
from bench.procs import (
    BenchError,
    Child,
    Fleet,
    control_app,
    hostname,
    tree_rss_kib,
    wait_for,
    wait_ready,
)


async def _limit_calls(
    sim_url: str, *, jobs: int, concurrency: int, tag: str, on_done: Callable[[int], None]
) -> tuple[list[tuple[float, float]], int]:
    client = openai.AsyncOpenAI(api_key=BENCH_OPENAI_KEY, base_url=f"{sim_url}/v1", max_retries=0)
    gate = asyncio.Semaphore(concurrency)
    spans: list[tuple[float, float]] = []
    errors = 0

    async def one(index: int) -> None:
        nonlocal errors
        async with gate:
            start = time.perf_counter()
            try:
                await client.chat.completions.create(
                    model=BENCH_MODEL,
                    messages=[{"role": "user", "content": prompt(index, tag)}],
                    max_tokens=BENCH_MAX_TOKENS,
                )
                spans.append((start, time.perf_counter()))
            except openai.OpenAIError:
                errors += 1
            on_done(1)

    try:
        await asyncio.gather(*(one(i) for i in range(jobs)))
    finally:
        await client.close()
    return spans, errors


def asyncio_limit(
    sim_url: str,
    *,
    sim_pid: int,
    jobs: int,
    concurrency: int,
    tag: str,
    on_done: Callable[[int], None],
) -> dict:
    """jobs/s of `jobs` SDK calls with `concurrency` in flight, first start to last end."""
    with CpuMeter({"simulator": [sim_pid]}, harness=True) as cpu:
        spans, errors = asyncio.run(
            _limit_calls(sim_url, jobs=jobs, concurrency=concurrency, tag=tag, on_done=on_done)
        )
    if not spans:
        raise BenchError("every asyncio baseline call failed; see the simulator log")
    return {
        **call_spans(spans, jobs=jobs, concurrency=concurrency, errors=errors),
        "cpu_ms_per_job": cpu.per_job_ms(jobs),
        "machine_busy_cores": cpu.busy_cores,
    }


def naive_celery(
    fleet: Fleet,
    *,
    redis_url: str,
    sim_url: str,
    sim_pid: int,
    latency_ms: int,
    jobs: int,
    on_count: Callable[[int], None],
) -> dict:
    """Start `celery -A bench.naive_app worker` (defaults), run `jobs` tasks, stop it."""
    env = {
        "CELERY_BROKER_URL": redis_url,
        "OPENAI_BASE_URL": f"{sim_url}/v1",
        "OPENAI_API_KEY": BENCH_OPENAI_KEY,
    }
    argv = [sys.executable, "-m", "celery", "-A", "bench.naive_app", "worker"]
    child = fleet.start("naive-celery", argv, env)
    control = control_app(redis_url)
    try:
        wait_ready(control, [hostname("celery")], [child])
        return _run_naive(
            control, child, redis.Redis.from_url(redis_url), sim_pid, latency_ms, jobs, on_count
        )
    finally:
        fleet.stop(child)
        control.close()


def _run_naive(
    control: Celery,
    child: Child,
    store: redis.Redis,
    sim_pid: int,
    latency_ms: int,
    jobs: int,
    on_count: Callable[[int], None],
) -> dict:
    """Send `jobs` tasks to the ready naive worker and time them from its own records."""
    rest_kib, processes = tree_rss_kib(child.pid)
    store.delete(NAIVE_TIMES_KEY)
    with CpuMeter({"workers": [child.pid], "simulator": [sim_pid]}) as cpu:
        for index in range(jobs):
            args = [prompt(index, "naive"), BENCH_MAX_TOKENS, BENCH_MODEL]
            control.send_task(NAIVE_TASK, args=args)
        load_kib = _wait_naive(store, jobs, child, latency_ms, on_count)
    spans = [tuple(map(float, raw.split())) for raw in store.lrange(NAIVE_TIMES_KEY, 0, -1)]
    seconds = max(end for _s, end in spans) - min(start for start, _e in spans)
    return {
        "jobs": jobs,
        "processes": processes - 1,
        "cores": os.cpu_count(),
        "seconds": round(seconds, 3),
        "jobs_per_s": round(len(spans) / seconds, 2),
        "cpu_ms_per_job": cpu.per_job_ms(jobs),
        "rss_mib_at_rest": mib(rest_kib),
        "rss_mib_under_load": mib(load_kib),
    }


def _wait_naive(
    store: redis.Redis, jobs: int, child: Child, latency_ms: int, on_count: Callable[[int], None]
) -> int:
    """Until every task recorded its timing; returns the peak RSS of the worker tree seen."""
    peak = 0
    cores = os.cpu_count() or 1

    def done() -> bool:
        nonlocal peak
        peak = max(peak, tree_rss_kib(child.pid)[0])
        count = store.llen(NAIVE_TIMES_KEY)
        on_count(count)
        return count >= jobs

    wait_for(
        done,
        what=f"{jobs} naive Celery tasks",
        children=[child],
        timeout_s=phase_timeout(jobs, cores, latency_ms),
    )
    return peak
