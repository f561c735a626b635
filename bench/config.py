"""What one `genq bench` run measures, with the presets (default, quick) and hard bounds.

Every count and every wait is bounded, so a run always ends; every address is loopback, so a
benchmark never sends traffic off the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from models.schemas import MAX_BATCH_JOBS

SCENARIOS = ("enqueue", "throughput", "peak", "latency", "scaling", "batch-api", "inflight")
#: what a run without `--scenario` measures (`inflight` holds 1,000 calls for seconds: ask for it)
DEFAULT_SCENARIOS = SCENARIOS[:-1]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: the OpenAI key the workers and baselines send to the local simulator (it checks only the form)
BENCH_OPENAI_KEY = "sk-bench-local"
#: the text model every benchmark job asks for (the simulator counts its tokens like OpenAI)
BENCH_MODEL = "gpt-4.1-nano"
#: completion tokens per job: short replies keep the simulator's own CPU out of the way
BENCH_MAX_TOKENS = 24
#: the naive baseline's task, and where it appends "start end" (wall-clock seconds) per task
NAIVE_TASK = "bench.naive_app.generate"
NAIVE_TIMES_KEY = "genq-bench:naive:times"
#: upper bounds on the options, so a typo cannot start a run of hours
MAX_JOBS = 20_000
#: lines of the batch-api scenario's input file at most (OpenAI's limit per batch)
MAX_BATCH_LINES = 50_000
MAX_PROCESSES = 8
MAX_THREADS = 128
#: `--concurrency` of the in-flight scenario run alone (event-loop pools hold thousands of calls)
MAX_INFLIGHT_CONCURRENCY = 2000
#: a phase gives up after its ideal time x this factor, plus time for the jobs at a floor rate
TIMEOUT_FACTOR = 6
TIMEOUT_MARGIN_S = 30.0
TIMEOUT_FLOOR_JOBS_PER_S = 5.0


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """The knobs of one run; `scenarios` picks which parts run."""

    jobs: int = 640
    workers: int = 2
    concurrency: int = 16
    #: `genq api --workers`: one API process per core, as deployed
    api_workers: int = 2
    latency_ms: int = 200
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    #: `genq worker --pool` of the genq workers (None: genq's default)
    pool: str | None = None
    database: Literal["postgres", "sqlite"] = "postgres"
    #: an existing, migrated database to use instead of creating one (the smoke test's)
    database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/11"
    pg_admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    output_dir: Path = Path("bench/results")
    tiktoken_dir: Path | None = None
    peak_jobs: int = 600
    naive_jobs: int = 40
    latency_jobs: int = 200
    latency_rate: float = 20.0
    enqueue_submits: int = 1000
    enqueue_clients: int = 16
    #: jobs per `POST /v1/jobs/batch` in the enqueue scenario's batch phase
    enqueue_batch: int = 50
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_concurrency: int = 8
    scale_waves: int = 12
    #: requests in the batch-api scenario's input file
    batch_lines: int = 50_000
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        """Model calls genq can have in flight: W processes x C threads."""
        return self.workers * self.concurrency

    @property
    def throughput_jobs(self) -> int:
        """N rounded up to whole waves of W·C, so the ideal time is exactly N / (W·C) x L."""
        return math.ceil(self.jobs / self.slots) * self.slots

    def check(self) -> BenchConfig:
        """Refuse unknown scenarios, counts out of bounds and any address off this machine."""
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
        _bounded("--jobs", self.jobs, 1, MAX_JOBS)
        _bounded("--peak-jobs", self.peak_jobs, 1, MAX_JOBS)
        _bounded("--enqueue-submits", self.enqueue_submits, 1, MAX_JOBS)
        _bounded("enqueue batch size", self.enqueue_batch, 1, MAX_BATCH_JOBS)
        _bounded("--latency-jobs", self.latency_jobs, 1, MAX_JOBS)
        _bounded("--batch-lines", self.batch_lines, 1, MAX_BATCH_LINES)
        _bounded("--workers", self.workers, 1, MAX_PROCESSES)
        _bounded("--api-workers", self.api_workers, 1, MAX_PROCESSES)
        alone = set(self.scenarios) == {"inflight"}
        _bounded(
            "--concurrency" if alone else "--concurrency (over 128: --scenario inflight alone)",
            self.concurrency,
            1,
            MAX_INFLIGHT_CONCURRENCY if alone else MAX_THREADS,
        )
        _bounded("--latency-ms", self.latency_ms, 0, 5_000)
        for count in self.scale_workers:
            _bounded("scaling workers", count, 1, MAX_PROCESSES)
        if not 0 < self.latency_rate <= 1000:
            raise ValueError("--latency-rate must be between 0 and 1000 jobs/s")
        for url in (self.redis_url, self.pg_admin_url, self.database_url):
            if url and not url.startswith("sqlite"):
                require_loopback(url)
        return self

    def quick(self) -> BenchConfig:
        """Smaller counts for a run of under a minute (noisier ratios)."""
        return replace(
            self,
            jobs=min(self.jobs, self.slots * 4),
            peak_jobs=min(self.peak_jobs, self.slots * 4),
            naive_jobs=min(self.naive_jobs, 12),
            latency_jobs=min(self.latency_jobs, 40),
            enqueue_submits=min(self.enqueue_submits, 200),
            scale_workers=(1, 2),
            scale_waves=min(self.scale_waves, 4),
            batch_lines=min(self.batch_lines, 5_000),
        )

    def public(self) -> dict:
        """The settings as JSON-friendly values, written into every result file."""
        return {
            "jobs": self.throughput_jobs,
            "workers": self.workers,
            "concurrency": self.concurrency,
            "api_workers": self.api_workers,
            "latency_ms": self.latency_ms,
            "scenarios": list(self.scenarios),
            "database": self.database,
            "redis_url": self.redis_url,
            "peak_jobs": self.peak_jobs,
            "naive_jobs": self.naive_jobs,
            "latency_jobs": self.latency_jobs,
            "latency_rate": self.latency_rate,
            "enqueue_submits": self.enqueue_submits,
            "enqueue_clients": self.enqueue_clients,
            "enqueue_batch": self.enqueue_batch,
            "scale_workers": list(self.scale_workers),
            "scale_concurrency": self.scale_concurrency,
            "scale_waves": self.scale_waves,
            "batch_lines": self.batch_lines,
            "pool": self.pool,
            "worker_flags": ["--concurrency", "-Q", "--without-mingle"],
            "model": BENCH_MODEL,
            "max_tokens": BENCH_MAX_TOKENS,
        }


def _bounded(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")


def require_loopback(url: str) -> str:
    """A benchmark talks to this machine only: refuse any other host."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return url
    if parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"{url.split('@')[-1]!r} is not a loopback address (127.0.0.1)")
    return url


def phase_timeout(jobs: int, slots: int, latency_ms: int) -> float:
    """Seconds a phase may take before it is called failed: generous, never unbounded."""
    ideal = math.ceil(jobs / max(slots, 1)) * latency_ms / 1000
    return ideal * TIMEOUT_FACTOR + jobs / TIMEOUT_FLOOR_JOBS_PER_S + TIMEOUT_MARGIN_S
