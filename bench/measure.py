"""Reading results back: job counts and timestamps from the database, percentiles, memory samples.

Timings come from the rows the workers wrote (`started_at`, `finished_at`, attempt `latency_ms`),
not from polling the API, so polling never adds its interval to a measurement.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bench.procs import BenchError, Child, ensure_alive, tree_cpu_seconds, tree_rss_kib
from models.attempts import SUCCEEDED as ATTEMPT_SUCCEEDED
from models.attempts import Attempt
from models.jobs import FINISHED, SUCCEEDED, Job, aware

#: how often the harness asks the database how many jobs have finished
POLL_S = 0.25


@dataclass(frozen=True, kw_only=True)
class Window:
    """When a set of jobs ran: first start to last finish, and how they ended."""

    jobs: int
    succeeded: int
    first_started: datetime
    last_finished: datetime

    @property
    def seconds(self) -> float:
        return (self.last_finished - self.first_started).total_seconds()

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, kw_only=True)
class JobTiming:
    job_id: str
    created_at: datetime
    started_at: datetime
    finished_at: datetime
    model_ms: int


def finished_count(engine: Engine, key_id: str) -> int:
    """Jobs of this phase's key that reached an end state (what the progress bar shows)."""
    with Session(engine) as session:
        query = select(func.count()).where(Job.key_id == key_id, col(Job.status).in_(FINISHED))
        return session.exec(query).one()


def wait_jobs(
    engine: Engine,
    key_id: str,
    total: int,
    *,
    timeout_s: float,
    children: list[Child],
    on_count: Callable[[int], None] = lambda _n: None,
) -> None:
    """Until `total` jobs of this key are finished; fail early if a worker dies."""
    deadline = time.monotonic() + timeout_s
    while (done := finished_count(engine, key_id)) < total:
        on_count(done)
        for child in children:
            ensure_alive(child)
        if time.monotonic() > deadline:
            raise BenchError(f"only {done} of {total} jobs finished within {timeout_s:.0f}s")
        time.sleep(POLL_S)
    on_count(total)


def job_window(engine: Engine, key_id: str) -> Window:
    """First start to last finish of a phase's jobs, as the workers stamped them."""
    with Session(engine) as session:
        jobs = session.exec(
            select(
                func.count(),
                func.min(Job.started_at),
                func.max(Job.finished_at),
            ).where(Job.key_id == key_id)
        ).one()
        succeeded = session.exec(
            select(func.count()).where(Job.key_id == key_id, Job.status == SUCCEEDED)
        ).one()
    count, first, last = jobs
    if not count or first is None or last is None:
        raise BenchError("no job of this phase ran")
    return Window(
        jobs=count, succeeded=succeeded, first_started=aware(first), last_finished=aware(last)
    )


def job_timings(engine: Engine, key_id: str) -> list[JobTiming]:
    """Per succeeded job: its timestamps and its successful model call's latency."""
    query = (
        select(Job.id, Job.created_at, Job.started_at, Job.finished_at, Attempt.latency_ms)
        .join(Attempt, col(Attempt.job_id) == col(Job.id))
        .where(Job.key_id == key_id, Job.status == SUCCEEDED)
        .where(Attempt.outcome == ATTEMPT_SUCCEEDED)
    )
    with Session(engine) as session:
        rows = session.exec(query).all()
    return [
        JobTiming(
            job_id=job_id,
            created_at=aware(created),
            started_at=aware(started),
            finished_at=aware(finished),
            model_ms=latency,
        )
        for job_id, created, started, finished, latency in rows
    ]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max of a list of milliseconds, rounded for reading."""
    return {
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1) if values else float("nan"),
        "count": len(values),
    }


def call_spans(
    spans: list[tuple[float, float]], *, jobs: int, concurrency: int, errors: int
) -> dict:
    """A baseline's calls (start, end) as its rate: first start to last end, how long the
    starts took, and each call's time."""
    starts = sorted(start for start, _end in spans)
    seconds = max(end for _start, end in spans) - starts[0]
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "errors": errors,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(len(spans) / seconds, 2),
        "started_within_s": round(starts[-1] - starts[0], 2),
        "call_ms": summary_ms([(end - start) * 1000 for start, end in spans]),
    }


class MemorySampler:
    """Samples the RSS of some process trees in the background; keeps the peak of each."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2):
        self.pids = pids
        self.interval_s = interval_s
        self.peak_kib: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak_kib[name] = max(self.peak_kib[name], tree_rss_kib(pid)[0])
            self._stop.wait(self.interval_s)


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


class CpuMeter:
    """CPU seconds that groups of processes (and, as "harness", this one) use inside a block.

    On a shared machine wall-clock rates move with other people's load; CPU time per job
    barely does, so it is the number to compare when ratios look noisy.
    """

    def __init__(self, groups: dict[str, list[int]], *, harness: bool = False):
        self.groups = groups
        self.harness = harness
        self.used: dict[str, float] = {}
        self.busy_cores = 0.0
        self._start: dict[str, float] = {}
        self._machine = (0, 0)

    def _now(self) -> dict[str, float]:
        now = {name: sum(tree_cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        if self.harness:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            now["harness"] = usage.ru_utime + usage.ru_stime
        return now

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        self._machine = machine_jiffies()
        return self

    def __exit__(self, *_exc) -> None:
        end = self._now()
        self.used = {name: end[name] - self._start[name] for name in end}
        busy, total = (b - a for a, b in zip(self._machine, machine_jiffies(), strict=True))
        self.busy_cores = round(busy / total * (os.cpu_count() or 1), 2) if total else 0.0

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        return {
            name: round(1000 * seconds / max(jobs, 1), 2) for name, seconds in self.used.items()
        }


def commit_ms(engine: Engine, commits: int = 40) -> float:
    """Median time of a one-row INSERT + COMMIT: the durable-write floor every job pays several
    times (submit, claim, finish), whatever genq's code does."""
    times = []
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS genq_bench_commit (x integer)"))
        conn.commit()
        for _ in range(commits):
            clock = time.perf_counter()
            conn.execute(text("INSERT INTO genq_bench_commit VALUES (1)"))
            conn.commit()
            times.append((time.perf_counter() - clock) * 1000)
        conn.execute(text("DROP TABLE genq_bench_commit"))
        conn.commit()
    return round(percentile(times, 50), 2)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat.

    Busy includes PostgreSQL, Redis and other people's processes: when it nears the core count
    during a phase, the phase was bound by CPU, not by the model's latency.
    """
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total
