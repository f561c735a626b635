"""The in-flight scenario: how many model calls one worker process holds open at once.

Real model calls take seconds, so a platform doing 100 jobs/s holds hundreds of calls in flight.
With `--workers 1 --concurrency 1000 --latency-ms 5000 --jobs 1000` every queued job could be
in its model call at the same moment: the simulator counts the calls it is answering and keeps
the peak, jobs/s is compared with the ideal min(C, N) / L, and the worker's RSS is sampled.
"""

from __future__ import annotations

import httpx

from bench.context import Bench
from bench.scenarios import run_jobs


def inflight(bench: Bench) -> dict:
    """Peak calls in flight (as the simulator saw them), jobs/s against the ideal, peak RSS."""
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
            before_release=lambda: httpx.post(f"{sim}/_simulator/stats/reset", timeout=10),
        )
        seen = httpx.get(f"{sim}/_simulator/stats", timeout=10).json()
    slots = config.workers * config.concurrency
    ideal = min(slots, jobs) / (config.latency_ms / 1000) if config.latency_ms else None
    return {
        **run,
        "pool": config.pool or "default",
        "peak_in_flight": seen["peak_in_flight"],
        "ideal_jobs_per_s": round(ideal, 2) if ideal else None,
        "efficiency": round(run["jobs_per_s"] / ideal, 3) if ideal else None,
    }
