"""The in-flight scenario: how many model calls one worker process holds open at once.

Real model calls take seconds, so a platform doing 100 jobs/s holds hundreds of calls in flight.
With `--workers 1 --concurrency 1000 --latency-ms 5000 --jobs 1000` every queued job could be
in its model call at the same moment: the simulator counts the calls it is answering and keeps
the peak, jobs/s is compared with the ideal min(C, N) / L, and the worker's RSS is sampled.

Two baselines on the same simulator, same run, same N and C, one process each: the asyncio
limit (`AsyncOpenAI` on one event loop, as the throughput scenario's) and the thread limit
(bench/thread_limit.py: genq's own provider on C threads with no queue and no database). What
one process of this machine can do at that setting is the better of the two; genq's ratio to it
says how much of the gap to the ideal is genq's and how much the machine's.
"""

from __future__ import annotations

import json
import sys

import httpx

from bench import baselines
from bench.config import phase_timeout
from bench.context import Bench
from bench.procs import BenchError, wait_for
from bench.scenarios import run_jobs


def inflight(bench: Bench) -> dict:
    """Peak calls in flight (as the simulator saw them), jobs/s against the ideal and against
    both one-process baselines, peak RSS."""
    config = bench.config
    sim = bench.simulator(config.latency_ms)
    jobs = config.jobs
    with bench.workers(config.workers, config.concurrency, sim, "inflight") as workers:
        run = run_jobs(
            bench,
            workers,
            tag="inflight",
            jobs=jobs,
            latency_ms=config.latency_ms,
            threads=config.concurrency,
            before_release=lambda: _reset(sim),
        )
        seen = _peak(sim)
    slots = config.workers * config.concurrency
    ideal = min(slots, jobs) / (config.latency_ms / 1000) if config.latency_ms else None
    limits = {
        "asyncio": _asyncio_limit(bench, sim, slots),
        "threads": _thread_limit(bench, sim, slots),
    }
    best = max(limit["jobs_per_s"] for limit in limits.values())
    return {
        **run,
        "pool": config.pool or "default",
        "peak_in_flight": seen,
        "ideal_jobs_per_s": round(ideal, 2) if ideal else None,
        "efficiency": round(run["jobs_per_s"] / ideal, 3) if ideal else None,
        "limits": limits,
        "genq_over_limit": round(run["jobs_per_s"] / best, 3),
    }


def _reset(sim: str) -> None:
    httpx.post(f"{sim}/_simulator/stats/reset", timeout=10)


def _peak(sim: str) -> int:
    return httpx.get(f"{sim}/_simulator/stats", timeout=10).json()["peak_in_flight"]


def _asyncio_limit(bench: Bench, sim: str, concurrency: int) -> dict:
    config = bench.config
    _reset(sim)
    with bench.phase(f"inflight: asyncio limit, {config.jobs} calls", config.jobs) as tracker:
        limit = baselines.asyncio_limit(
            sim,
            sim_pid=bench.simulator_pid(config.latency_ms),
            jobs=config.jobs,
            concurrency=concurrency,
            tag="inflight-limit",
            on_done=tracker.advance,
        )
    return {**limit, "peak_in_flight": _peak(sim)}


def _thread_limit(bench: Bench, sim: str, concurrency: int) -> dict:
    """bench/thread_limit.py as a child process (one process, like the worker), its result read
    from the file it writes."""
    config = bench.config
    out = bench.fleet.log_dir / "thread-limit.json"
    out.unlink(missing_ok=True)
    _reset(sim)
    argv = [sys.executable, "-m", "bench.thread_limit", sim, "--jobs", str(config.jobs)]
    argv += ["--concurrency", str(concurrency), "--out", str(out)]
    with bench.phase(f"inflight: thread limit, {config.jobs} calls", config.jobs):
        child = bench.fleet.start("thread-limit", argv)
        try:
            wait_for(
                lambda: child.popen.poll() is not None,
                what="the thread-limit baseline",
                children=[],
                timeout_s=2 * phase_timeout(config.jobs, concurrency, config.latency_ms),
            )
        finally:
            bench.fleet.stop(child)
    if child.popen.returncode != 0 or not out.exists():
        raise BenchError(f"the thread-limit baseline failed:\n{child.tail()}")
    limit = json.loads(out.read_text())
    if "jobs_per_s" not in limit:
        raise BenchError("every thread-limit baseline call failed; see the simulator log")
    return {**limit, "peak_in_flight": _peak(sim)}
