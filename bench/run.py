"""`genq bench`: run the chosen scenarios with their baselines, then write JSON and Markdown.

Order matters on a small machine: nothing of one phase runs while another is measured (the
API idles during throughput runs, genq workers are stopped while the baselines run).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench import baselines, batch_api, report, scenarios, table
from bench.config import BenchConfig
from bench.context import Bench, bench_database, child_env
from bench.inflight import inflight
from bench.measure import commit_ms
from bench.procs import BenchError, Fleet


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _limit(bench: Bench, latency_ms: int, jobs: int, tag: str) -> dict:
    sim = bench.simulator(latency_ms)
    with bench.phase(f"{tag}: asyncio limit, {jobs} calls", jobs) as tracker:
        return baselines.asyncio_limit(
            sim,
            sim_pid=bench.simulator_pid(latency_ms),
            jobs=jobs,
            concurrency=bench.config.slots,
            tag=tag,
            on_done=tracker.advance,
        )


def _naive(bench: Bench) -> dict:
    config = bench.config
    with bench.phase(f"naive Celery: {config.naive_jobs} tasks", config.naive_jobs) as tracker:
        return baselines.naive_celery(
            bench.fleet,
            redis_url=config.redis_url,
            sim_url=bench.simulator(config.latency_ms),
            sim_pid=bench.simulator_pid(config.latency_ms),
            latency_ms=config.latency_ms,
            jobs=config.naive_jobs,
            on_count=tracker.set,
        )


def _main_point(bench: Bench, results: dict) -> None:
    """Throughput and added latency share one set of workers at the latency-bound point."""
    config, chosen = bench.config, bench.config.scenarios
    sim = bench.simulator(config.latency_ms)
    with bench.workers(config.workers, config.concurrency, sim, "main") as workers:
        if "throughput" in chosen:
            results["throughput"] = {
                "genq": scenarios.run_jobs(
                    bench,
                    workers,
                    tag="throughput",
                    jobs=config.throughput_jobs,
                    latency_ms=config.latency_ms,
                    threads=config.concurrency,
                )
            }
        else:
            bench.warm_up(workers, config.concurrency, config.latency_ms)
            bench.release(workers)
        if "latency" in chosen:
            results["latency"] = scenarios.latency(bench, workers, config.latency_ms)
    if "throughput" in chosen:
        results["throughput"]["limit"] = _limit(
            bench, config.latency_ms, config.throughput_jobs, "throughput"
        )
        results["throughput"]["naive"] = _naive(bench)


def _peak(bench: Bench) -> dict:
    config = bench.config
    jobs = -(-config.peak_jobs // config.slots) * config.slots
    with bench.workers(config.workers, config.concurrency, bench.simulator(0), "peak") as workers:
        genq = scenarios.run_jobs(
            bench, workers, tag="peak", jobs=jobs, latency_ms=0, threads=config.concurrency
        )
    return {"genq": genq, "limit": _limit(bench, 0, jobs, "peak")}


def run_scenarios(bench: Bench) -> tuple[dict, dict]:
    """Every chosen scenario; one that fails is reported in `errors` and the rest still run.

    A scenario that failed half-way keeps what it measured (e.g. genq without its baselines).
    """
    results: dict = {}
    errors: dict = {}
    chosen = bench.config.scenarios
    latencies = {0} if "peak" in chosen else set()
    if set(chosen) - {"enqueue", "peak"}:
        latencies.add(bench.config.latency_ms)
    try:
        bench.start_services(latencies)
    except BenchError as exc:
        return results, {"start": str(exc)}
    steps = [
        ("enqueue", lambda: results.update(enqueue=scenarios.enqueue(bench))),
        ("throughput", lambda: _main_point(bench, results)),
        ("peak", lambda: results.update(peak=_peak(bench))),
        ("scaling", lambda: results.update(scaling=scenarios.scaling(bench))),
        ("inflight", lambda: results.update(inflight=inflight(bench))),
        # last: it leaves a batch's jobs (cancelled) in the database
        ("batch-api", lambda: results.update({"batch-api": batch_api.batch_api(bench)})),
    ]
    for name, step in steps:
        wanted = name in chosen or (name == "throughput" and "latency" in chosen)
        if not wanted:
            continue
        try:
            step()
        except BenchError as exc:
            errors[name] = str(exc)
            bench.drop_queues()
    return results, errors


def run_bench(config: BenchConfig, console: Console) -> tuple[dict, Path, Path]:
    """The whole run; returns the report and the paths of its JSON and Markdown files."""
    config.check()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    store = redis.Redis.from_url(config.redis_url)
    store.flushdb()  # the bench's own Redis database (db 11 by default)
    started = time.time()
    data = {"started_at": datetime.now(UTC).isoformat(), "machine": report.machine()}
    with bench_database(config) as database_url:
        fleet = Fleet(child_env(config, database_url), config.output_dir / f"{stamp}-logs")
        progress = _progress(console)
        bench = Bench(config, database_url, fleet, progress)
        data["machine"]["db_commit_ms_p50"] = commit_ms(bench.engine)
        try:
            with progress:
                data["scenarios"], data["errors"] = run_scenarios(bench)
        finally:
            fleet.stop_all()
            bench.control.close()
            bench.engine.dispose()
            store.flushdb()
    data["seconds"] = round(time.time() - started, 1)
    data["settings"] = config.public()
    data["log_dir"] = str(fleet.log_dir)
    data["timings_s"] = bench.timings
    data["ratios"] = report.ratios(data["scenarios"])
    data["targets"] = [t.public() for t in report.targets(data["scenarios"], data["ratios"])]
    data["markdown"] = table.markdown(data)
    json_path, md_path = report.write(data, config.output_dir, stamp)
    return data, json_path, md_path
