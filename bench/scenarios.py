"""The measurements themselves: enqueue rate, throughput (and peak), added latency, scaling.

Each returns a plain dict that goes into the JSON file as is. Throughput phases fill the queue
first, then release all workers at once, and time first start → last finish from the job rows.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from bench.config import phase_timeout
from bench.context import Bench
from bench.http import Submitted, batch_body, job_body, submit_at_rate, submit_closed_loop
from bench.measure import (
    CpuMeter,
    MemorySampler,
    job_timings,
    job_window,
    mib,
    percentile,
    summary_ms,
    wait_jobs,
)
from bench.procs import BenchError, Child, tree_rss_kib

#: concurrent connections used to fill the queue before a throughput phase
FILL_CLIENTS = 16
#: submits sent before the enqueue rate is timed (first requests load encodings, open pools)
WARM_UP_SUBMITS = 30


def _submit_all(bench: Bench, secret: str, tag: str, jobs: int) -> list[Submitted]:
    bodies = [job_body(i, tag) for i in range(jobs)]
    with bench.phase(f"{tag}: submit {jobs} jobs", jobs) as tracker:
        results = asyncio.run(
            submit_closed_loop(
                bench.api(), secret, bodies, clients=FILL_CLIENTS, on_done=tracker.advance
            )
        )
    refused = [r.status for r in results if r.status != 202]
    if refused:
        raise BenchError(f"{len(refused)} submits were refused, e.g. HTTP {refused[0]}")
    return results


def enqueue(bench: Bench) -> dict:
    """Accepted submits per second through the API with concurrent clients: one job per request,
    then the same number of jobs in batches (`POST /v1/jobs/batch`)."""
    config = bench.config
    _key_id, secret = bench.new_key("enqueue")
    warm = [job_body(i, "warm-up") for i in range(WARM_UP_SUBMITS)]
    asyncio.run(submit_closed_loop(bench.api(), secret, warm, clients=config.enqueue_clients))
    single = _timed_submits(
        bench,
        secret,
        [job_body(i, "enqueue") for i in range(config.enqueue_submits)],
        label=f"enqueue: {config.enqueue_submits} submits, {config.enqueue_clients} clients",
    )
    size = config.enqueue_batch
    batches = [
        batch_body(range(start, min(start + size, config.enqueue_submits)), "enqueue-batch")
        for start in range(0, config.enqueue_submits, size)
    ]
    batched = _timed_submits(
        bench,
        secret,
        batches,
        label=f"enqueue: {config.enqueue_submits} jobs in batches of {size}",
        path="/v1/jobs/batch",
    )
    return {
        **single,
        "submits_per_s": single["jobs_per_s"],
        "batch": {"size": size, **batched},
    }


def _timed_submits(
    bench: Bench, secret: str, bodies: list[bytes], *, label: str, path: str = "/v1/jobs"
) -> dict:
    """Send `bodies` with the configured clients; jobs accepted per second and API CPU per job."""
    clients = bench.config.enqueue_clients
    cpu = CpuMeter({"api": [bench.api_pid()]}, harness=True)
    with cpu, bench.phase(label, len(bodies)) as tracker:
        clock = time.perf_counter()
        results = asyncio.run(
            submit_closed_loop(
                bench.api(), secret, bodies, clients=clients, on_done=tracker.advance, path=path
            )
        )
        seconds = time.perf_counter() - clock
    bench.drop_queues()
    accepted = sum(r.jobs for r in results if r.status == 202)
    return {
        "submits": len(bodies),
        "clients": clients,
        "accepted": accepted,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(accepted / seconds, 1),
        "request_ms": summary_ms([r.seconds * 1000 for r in results]),
        "cpu_ms_per_submit": cpu.per_job_ms(max(accepted, 1)),
        "machine_busy_cores": cpu.busy_cores,
    }


def run_jobs(
    bench: Bench,
    workers: list[Child],
    *,
    tag: str,
    jobs: int,
    latency_ms: int,
    threads: int,
    before_release: Callable[[], None] = lambda: None,
) -> dict:
    """Fill the queue with `jobs`, release the held workers, time them; RSS at rest and peak."""
    slots = threads * len(workers)
    bench.warm_up(workers, threads, latency_ms)
    key_id, secret = bench.new_key(tag)
    rest = {w.name: tree_rss_kib(w.pid)[0] for w in workers}
    _submit_all(bench, secret, tag, jobs)
    sampler = MemorySampler({w.name: w.pid for w in workers})
    cpu = CpuMeter(
        {"workers": [w.pid for w in workers], "simulator": [bench.simulator_pid(latency_ms)]}
    )
    with sampler, cpu, bench.phase(f"{tag}: run {jobs} jobs", jobs) as tracker:
        before_release()
        bench.release(workers)
        wait_jobs(
            bench.engine,
            key_id,
            jobs,
            timeout_s=phase_timeout(jobs, slots, latency_ms),
            children=workers,
            on_count=tracker.set,
        )
    window = job_window(bench.engine, key_id)
    ideal = slots / (latency_ms / 1000) if latency_ms else None
    return {
        "jobs": window.jobs,
        "succeeded": window.succeeded,
        "workers": len(workers),
        "threads": slots,
        "latency_ms": latency_ms,
        "seconds": round(window.seconds, 3),
        "jobs_per_s": round(window.rate, 2),
        "ideal_jobs_per_s": round(ideal, 2) if ideal else None,
        "efficiency": round(window.rate / ideal, 3) if ideal else None,
        **_slot_time(bench, key_id),
        "cpu_ms_per_job": cpu.per_job_ms(window.jobs),
        "machine_busy_cores": cpu.busy_cores,
        "rss_mib_at_rest": {name: mib(kib) for name, kib in rest.items()},
        "rss_mib_under_load": {name: mib(kib) for name, kib in sampler.peak_kib.items()},
    }


def _slot_time(bench: Bench, key_id: str) -> dict:
    """How long each job held a worker thread (claim to finish) and how much of it was the call.

    Throughput is slots / time held; at the ideal, a job holds its thread for the model's
    latency alone. The gap is genq's own time plus waiting (database, Redis, the GIL).
    """
    rows = job_timings(bench.engine, key_id)
    starts = sorted(t.started_at.timestamp() for t in rows)
    spread = [s - starts[0] for s in starts]
    return {
        "job_ms": summary_ms([(t.finished_at - t.started_at).total_seconds() * 1000 for t in rows]),
        "call_ms": summary_ms([float(t.model_ms) for t in rows]),
        # how fast the workers took the queued jobs: first start to the 50th/90th/last start
        "claimed_within_s": {f"p{q}": round(percentile(spread, q), 2) for q in (50, 90, 100)},
    }


def latency(bench: Bench, workers: list[Child], latency_ms: int) -> dict:
    """Submit → finished minus the model's time, at a steady, moderate open-loop rate."""
    config = bench.config
    key_id, secret = bench.new_key("latency")
    bodies = [job_body(i, "latency") for i in range(config.latency_jobs)]
    label = f"latency: {len(bodies)} jobs at {config.latency_rate:g}/s"
    with bench.phase(label, len(bodies)) as tracker:
        sent = asyncio.run(
            submit_at_rate(
                bench.api(), secret, bodies, rate=config.latency_rate, on_done=tracker.advance
            )
        )
    wait_jobs(
        bench.engine,
        key_id,
        len(bodies),
        timeout_s=phase_timeout(len(bodies), config.slots, latency_ms),
        children=workers,
    )
    return latency_breakdown(bench, key_id, sent, latency_ms)


def latency_breakdown(bench: Bench, key_id: str, sent: list[Submitted], latency_ms: int) -> dict:
    """Where the time between submit and finish went, per job, as percentiles."""
    sent_at = {s.job_id: s.sent_at for s in sent if s.job_id}
    rows = [t for t in job_timings(bench.engine, key_id) if t.job_id in sent_at]
    total = [(t.finished_at.timestamp() - sent_at[t.job_id]) * 1000 for t in rows]
    return {
        "jobs": len(sent),
        "succeeded": len(rows),
        "rate": bench.config.latency_rate,
        "model_latency_ms": latency_ms,
        "added_ms": summary_ms([ms - latency_ms for ms in total]),
        "added_beyond_call_ms": summary_ms(
            [ms - t.model_ms for ms, t in zip(total, rows, strict=True)]
        ),
        "parts_p50_ms": {
            "submit_to_stored": _p50(
                [(t.created_at.timestamp() - sent_at[t.job_id]) * 1000 for t in rows]
            ),
            "queued": _p50([(t.started_at - t.created_at).total_seconds() * 1000 for t in rows]),
            "sdk_and_http": _p50([t.model_ms - latency_ms for t in rows]),
            "worker_bookkeeping": _p50(
                [(t.finished_at - t.started_at).total_seconds() * 1000 - t.model_ms for t in rows]
            ),
        },
    }


def _p50(values: list[float]) -> float:
    return summary_ms(values)["p50"]


def scaling(bench: Bench) -> dict:
    """The same per-process load with 1, 2, 4… worker processes: speed-up per step."""
    config = bench.config
    sim = bench.simulator(config.latency_ms)
    steps = []
    for count in config.scale_workers:
        jobs = config.scale_waves * count * config.scale_concurrency
        tag = f"scale-{count}w"
        with bench.workers(count, config.scale_concurrency, sim, tag) as workers:
            steps.append(
                run_jobs(
                    bench,
                    workers,
                    tag=tag,
                    jobs=jobs,
                    latency_ms=config.latency_ms,
                    threads=config.scale_concurrency,
                )
            )
    for before, after in itertools.pairwise(steps):
        after["speedup_vs_previous"] = round(after["jobs_per_s"] / before["jobs_per_s"], 3)
    for step in steps:
        step["speedup_vs_first"] = round(step["jobs_per_s"] / steps[0]["jobs_per_s"], 3)
    return {"concurrency": config.scale_concurrency, "steps": steps}
