"""The benchmark's pure parts: bounds, loopback-only addresses, percentiles, ratios, the table."""

from __future__ import annotations

import pytest

from bench.config import BenchConfig, phase_timeout, require_loopback
from bench.measure import percentile, summary_ms
from bench.report import Target, ratios, targets
from bench.table import markdown


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"jobs": 0}, "--jobs"),
        ({"workers": 99}, "--workers"),
        ({"concurrency": 0}, "--concurrency"),
        ({"scenarios": ("throughput", "warp")}, "unknown scenario"),
        ({"redis_url": "redis://10.0.0.5:6379/11"}, "not a loopback"),
        ({"pg_admin_url": "postgresql+psycopg://u@db.example.com/postgres"}, "not a loopback"),
    ],
)
def test_out_of_bounds_options_and_remote_addresses_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**changes).check()


def test_loopback_and_unix_addresses_are_accepted():
    for url in ("redis://127.0.0.1:6379/11", "redis://localhost/2", "unix:///tmp/redis.sock"):
        assert require_loopback(url) == url


def test_jobs_round_up_to_whole_waves_and_quick_shrinks_every_count():
    config = BenchConfig(jobs=100, workers=2, concurrency=16)
    assert config.throughput_jobs == 128
    quick = config.quick()
    assert quick.throughput_jobs <= config.throughput_jobs
    assert quick.enqueue_submits < config.enqueue_submits and quick.scale_workers == (1, 2)


def test_every_phase_has_a_finite_timeout_even_at_zero_latency():
    assert 0 < phase_timeout(1000, 32, 0) < 600
    assert phase_timeout(640, 32, 200) > 20 * 0.2


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([5.0], 99, 5.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), (list(range(101)), 99, 99.0)],
)
def test_percentile_interpolates_between_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_summary_of_nothing_is_nan_not_an_error():
    summary = summary_ms([])
    assert summary["count"] == 0 and summary["p50"] != summary["p50"]


@pytest.mark.parametrize(
    ("value", "bound", "higher", "met"),
    [
        (0.95, 0.9, True, True),
        (0.5, 0.9, True, False),
        (12, 15, False, True),
        (None, 1, True, None),
    ],
)
def test_a_target_is_met_missed_or_unknown(value, bound, higher, met):
    assert Target(name="t", value=value, bound=bound, higher_is_better=higher).met is met


def _report() -> dict:
    genq = {
        "jobs": 640,
        "succeeded": 640,
        "workers": 2,
        "threads": 32,
        "latency_ms": 200,
        "jobs_per_s": 144.0,
        "ideal_jobs_per_s": 160.0,
        "efficiency": 0.9,
        "cpu_ms_per_job": {"workers": 10.0, "simulator": 2.0},
        "rss_mib_at_rest": {"w0": 100.0},
        "rss_mib_under_load": {"w0": 110.0},
    }
    scenarios = {
        "throughput": {
            "genq": genq,
            "limit": {"jobs_per_s": 150.0, "concurrency": 32, "cpu_ms_per_job": {"harness": 5}},
            "naive": {
                "jobs": 40,
                "processes": 2,
                "jobs_per_s": 9.6,
                "cpu_ms_per_job": {"workers": 11.0},
                "rss_mib_at_rest": 240.0,
                "rss_mib_under_load": 250.0,
            },
        },
        "scaling": {
            "concurrency": 8,
            "steps": [
                {"workers": 1, "jobs_per_s": 38.0, "ideal_jobs_per_s": 40.0, "speedup_vs_first": 1},
                {
                    "workers": 2,
                    "jobs_per_s": 70.0,
                    "ideal_jobs_per_s": 80.0,
                    "speedup_vs_first": 1.84,
                },
            ],
        },
    }
    ratio = ratios(scenarios)
    report = {
        "scenarios": scenarios,
        "ratios": ratio,
        "targets": [t.public() for t in targets(scenarios, ratio)],
        "errors": {"peak": "only 3 of 8 jobs finished within 30s"},
        "machine": {"cores": 2, "cpu": "test CPU", "python": "3.11", "load_average": [1.0]},
        "settings": {"database": "postgres", "model": "gpt-4.1-nano", "max_tokens": 24},
    }
    return report


def test_ratios_and_targets_follow_the_measurements_and_skip_what_did_not_run():
    report = _report()
    assert report["ratios"]["genq_over_limit"] == pytest.approx(0.96)
    assert report["ratios"]["genq_over_naive"] == pytest.approx(15.0)
    assert report["ratios"]["scaling_at_2"] == 1.84
    verdicts = {t["name"]: t["met"] for t in report["targets"]}
    assert verdicts["genq / naive Celery"] is True and verdicts["scaling 1 → 2 processes"] is True
    assert verdicts["single submits/s"] is None  # the enqueue scenario did not run


def test_the_table_has_a_row_per_measurement_and_names_failed_scenarios():
    table = markdown(_report())
    assert table.startswith("| scenario | setting | genq |")
    assert "144.0 jobs/s" in table and "genq/naive 15.0x" in table and "1.84x" in table
    assert "| peak | failed: only 3 of 8 jobs finished" in table
    assert "workers 10.0 ms" in table and "naive Celery 11.0 ms" in table
    assert "2 cores (test CPU)" in table


def test_concurrency_over_128_is_for_the_inflight_scenario_alone():
    assert BenchConfig(scenarios=("inflight",), concurrency=1000).check().concurrency == 1000
    with pytest.raises(ValueError, match="--scenario inflight alone"):
        BenchConfig(scenarios=("throughput", "inflight"), concurrency=1000).check()
    with pytest.raises(ValueError, match="--concurrency must be between 1 and 2000"):
        BenchConfig(scenarios=("inflight",), concurrency=2001).check()
    assert "inflight" not in BenchConfig().scenarios  # asked for, never run by default


def test_the_enqueue_submits_option_reaches_the_run_and_is_bounded(capsys):
    from bench.cli import run_from_cli
    from cli.main import app

    assert run_from_cli({"enqueue_submits": 0}, scenarios=["enqueue"], quick=False) == 2
    assert "--enqueue-submits must be between 1 and" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        app(["bench", "--enqueue-submits", "0", "--scenario", "enqueue"])
    assert exited.value.code == 2
    assert "--enqueue-submits must be between 1 and" in capsys.readouterr().err


def _inflight(workers: int = 1, threads: int = 1000) -> dict:
    return {
        "jobs": 1000,
        "succeeded": 1000,
        "workers": workers,
        "threads": threads,
        "latency_ms": 5000,
        "pool": "default",
        "peak_in_flight": 950,
        "jobs_per_s": 120.0,
        "ideal_jobs_per_s": 200.0,
        "efficiency": 0.6,
        "claimed_within_s": {"p50": 1.5, "p90": 3.0, "p100": 3.5},
        "cpu_ms_per_job": {"workers": 7.0, "simulator": 0.7},
        "rss_mib_under_load": {"w0": 260.0},
        "limits": {
            "asyncio": {
                "jobs_per_s": 110.0,
                "peak_in_flight": 1000,
                "cpu_ms_per_job": {"harness": 5.0},
            },
            "threads": {
                "jobs_per_s": 160.0,
                "peak_in_flight": 1000,
                "concurrency": threads,
                "started_within_s": 1.25,
                "cpu_ms_per_job": 2.0,
            },
        },
        "genq_over_limit": 0.75,
    }


def test_inflight_targets_judge_the_one_process_thousand_call_run_only():
    scenarios = {"inflight": _inflight()}
    verdicts = {t.name: t.met for t in targets(scenarios, ratios(scenarios))}
    assert verdicts["calls in flight in one process"] is True
    assert verdicts["in-flight jobs/s (ideal 200)"] is False
    assert verdicts["in-flight peak RSS (MiB)"] is True
    other = {"inflight": _inflight(workers=2, threads=2000)}
    assert not [t for t in targets(other, ratios(other)) if "flight" in t.name]
    report = {**_report(), "scenarios": scenarios, "errors": {}}
    report["targets"] = [t.public() for t in targets(scenarios, ratios(scenarios))]
    row = next(line for line in markdown(report).splitlines() if line.startswith("| in flight"))
    assert "950 calls in flight" in row and "120.0 jobs/s" in row and "260.0 MiB" in row
    assert "≥ 900 met" in row and "≥ 150 jobs/s **missed**" in row
    # and both one-process limits, with genq's ratio to the better one
    assert "asyncio + AsyncOpenAI: 110.0 jobs/s (1000 in flight, 5.0 ms CPU per call)" in row
    assert "genq's SDK path on 1000 threads: 160.0 jobs/s" in row and "within 1.25 s" in row
    assert "genq/limit 0.75" in row
