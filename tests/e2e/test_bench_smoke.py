"""`genq bench`, every scenario tiny (seconds each), so the harness itself cannot rot.

Timings are never asserted: the machine is shared and numbers move. What is asserted is that
every phase ran against real processes, every job succeeded, the counts add up, and the JSON and
Markdown carry the keys that README.md and scripts read.
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from bench.config import BenchConfig
from bench.run import run_bench

pytestmark = pytest.mark.e2e

TINY = {
    "jobs": 6,  # rounded up to whole waves of workers x concurrency: 8
    "workers": 1,
    "concurrency": 4,
    "latency_ms": 20,
    "peak_jobs": 8,
    "naive_jobs": 4,
    "latency_jobs": 10,
    "latency_rate": 20.0,
    "enqueue_submits": 20,
    "enqueue_clients": 4,
    "enqueue_batch": 8,  # 20 jobs: batches of 8, 8 and 4
    "api_workers": 1,
    "scale_workers": (1, 2),
    "scale_concurrency": 2,
    "scale_waves": 2,
    "batch_lines": 40,
}


@pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True)
def test_every_scenario_runs_tiny_and_writes_json_and_markdown(settings, tmp_path):
    # Given a tiny run of every scenario against real API, worker and simulator processes
    config = BenchConfig(
        **TINY,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        output_dir=tmp_path / "results",
        tiktoken_dir=settings.tiktoken_cache_dir,
    )
    data, json_path, md_path = run_bench(config, Console(file=io.StringIO()))
    # Then no phase failed and both files were written
    assert data["errors"] == {}
    saved = json.loads(json_path.read_text())
    assert md_path.read_text().startswith("| scenario |")
    assert set(saved["scenarios"]) == {
        "enqueue",
        "throughput",
        "peak",
        "latency",
        "scaling",
        "batch-api",
    }
    assert saved["machine"]["cores"] >= 1 and saved["settings"]["workers"] == 1
    assert {t["name"] for t in saved["targets"]} >= {"genq / naive Celery", "single submits/s"}
    assert set(saved["ratios"]) >= {"efficiency", "genq_over_limit", "genq_over_naive"}
    needles = ("throughput", "peak", "added latency", "/v1/jobs/batch", "scaling", "memory")
    for needle in (*needles, "POST /v1/batches"):
        assert needle in saved["markdown"]
    # And every job succeeded, with counts that add up
    assert_counts(saved["scenarios"])


def assert_counts(scenarios: dict) -> None:
    genq = scenarios["throughput"]["genq"]
    assert genq["jobs"] == genq["succeeded"] == 8 and genq["jobs_per_s"] > 0
    assert genq["efficiency"] > 0 and set(genq["cpu_ms_per_job"]) == {"workers", "simulator"}
    assert genq["rss_mib_at_rest"] and all(v > 0 for v in genq["rss_mib_under_load"].values())
    limit, naive = scenarios["throughput"]["limit"], scenarios["throughput"]["naive"]
    assert limit["jobs"] == 8 and limit["errors"] == 0 and limit["concurrency"] == 4
    assert naive["jobs"] == 4 and naive["processes"] >= 1 and naive["rss_mib_at_rest"] > 0
    peak = scenarios["peak"]
    assert peak["genq"]["succeeded"] == 8 and peak["genq"]["latency_ms"] == 0
    latency = scenarios["latency"]
    assert latency["jobs"] == latency["succeeded"] == latency["added_ms"]["count"] == 10
    assert set(latency["parts_p50_ms"]) == {
        "submit_to_stored",
        "queued",
        "sdk_and_http",
        "worker_bookkeeping",
    }
    enqueue = scenarios["enqueue"]
    assert enqueue["accepted"] == enqueue["submits"] == 20
    batch = enqueue["batch"]
    assert batch["submits"] == 3 and batch["accepted"] == 20 and batch["jobs_per_s"] > 0
    batch = scenarios["batch-api"]
    assert batch["lines"] == 40 and batch["jobs_per_s"] > 0 and batch["create_s"] > 0
    assert batch["messages_queued"] == 40  # every job's message in Redis before the answer
    assert batch["api_peak_rss_mib_create"] >= batch["api_rss_mib_at_rest"] > 0
    steps = scenarios["scaling"]["steps"]
    assert [s["workers"] for s in steps] == [1, 2]
    assert [s["jobs"] for s in steps] == [s["succeeded"] for s in steps] == [4, 8]
    assert steps[1]["speedup_vs_first"] > 0


@pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True)
def test_the_inflight_scenario_counts_calls_in_flight_at_the_simulator(settings, tmp_path):
    # Given a tiny in-flight run: one worker, 8 threads, 8 jobs of 300 ms calls
    config = BenchConfig(
        jobs=8,
        workers=1,
        concurrency=8,
        latency_ms=300,
        api_workers=1,
        scenarios=("inflight",),
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        output_dir=tmp_path / "results",
        tiktoken_dir=settings.tiktoken_cache_dir,
    )
    data, json_path, _md = run_bench(config, Console(file=io.StringIO()))
    assert data["errors"] == {}
    run = json.loads(json_path.read_text())["scenarios"]["inflight"]
    # Then every job ran, the simulator saw calls overlap (never more than the threads), and the
    # ramp, jobs/s against min(C, N)/L and the worker's peak RSS are reported
    assert run["jobs"] == run["succeeded"] == 8 and run["pool"] == "default"
    assert 2 <= run["peak_in_flight"] <= 8
    assert run["ideal_jobs_per_s"] == pytest.approx(8 / 0.3, rel=0.01) and run["efficiency"] > 0
    assert set(run["claimed_within_s"]) == {"p50", "p90", "p100"}
    assert all(v > 0 for v in run["rss_mib_under_load"].values())
    # and both one-process baselines made the same 8 calls on the same simulator, at most 8 at once
    for name in ("asyncio", "threads"):
        limit = run["limits"][name]
        assert limit["jobs"] == 8 and limit["errors"] == 0 and limit["jobs_per_s"] > 0, name
        assert 1 <= limit["peak_in_flight"] <= 8, name
    assert run["limits"]["threads"]["started_within_s"] >= 0
    best = max(limit["jobs_per_s"] for limit in run["limits"].values())
    assert run["genq_over_limit"] == pytest.approx(run["jobs_per_s"] / best, abs=0.001)
    assert (
        "| in flight |" in data["markdown"] and "genq's SDK path on 8 threads" in data["markdown"]
    )
