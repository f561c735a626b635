"""The Markdown table a run prints and README.md quotes: one row per measurement."""

from __future__ import annotations

HEADER = (
    "| scenario | setting | genq | baseline (same run) | ratio | target |",
    "|---|---|---|---|---|---|",
)


def _verdict(targets: dict, name: str, text: str) -> str:
    met = targets.get(name, {}).get("met")
    if met is None:
        return text
    return f"{text} {'met' if met else '**missed**'}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _throughput(s: dict, r: dict, t: dict) -> list[str]:
    genq, limit, naive = s["genq"], s.get("limit"), s.get("naive")
    setting = (
        f"{genq['workers']} proc x {genq['threads'] // genq['workers']} threads, "
        f"L = {genq['latency_ms']} ms, {genq['jobs']} jobs"
    )
    held = ""
    if "job_ms" in genq:
        held = (
            f"; a job holds its thread {_num(genq['job_ms']['p50'])} ms (p50), "
            f"{_num(genq['call_ms']['p50'])} ms of it in the model call"
        )
    rows = [
        f"| throughput, latency-bound | {setting} | {_num(genq['jobs_per_s'])} jobs/s{held} "
        f"| ideal C·W/L = {_num(genq['ideal_jobs_per_s'])} | efficiency {_num(r['efficiency'], 2)} "
        f"| {_verdict(t, 'efficiency at the latency-bound point', '≥ 0.90')} |"
    ]
    if limit:
        rows.append(
            f"| | | | asyncio + AsyncOpenAI, {limit['concurrency']} in flight: "
            f"{_num(limit['jobs_per_s'])} jobs/s | genq/limit {_num(r['genq_over_limit'], 2)} "
            f"| {_verdict(t, 'genq / asyncio limit', '≥ 0.90')} |"
        )
    if naive:
        rows.append(
            f"| | | | naive Celery prefork, {naive['processes']} proc "
            f"({naive['jobs']} jobs): {_num(naive['jobs_per_s'])} jobs/s "
            f"| genq/naive {_num(r['genq_over_naive'], 1)}x "
            f"| {_verdict(t, 'genq / naive Celery', '≥ 10x')} |"
        )
    return rows


def _peak(s: dict, r: dict) -> list[str]:
    genq, limit = s["genq"], s.get("limit")
    setting = f"{genq['workers']} proc x {genq['threads'] // genq['workers']} threads, L = 0"
    baseline = f"asyncio limit {_num(limit['jobs_per_s'])} jobs/s" if limit else ""
    return [
        f"| peak throughput | {setting}, {genq['jobs']} jobs | {_num(genq['jobs_per_s'])} jobs/s "
        f"| {baseline} | genq/limit {_num(r['peak_genq_over_limit'], 2)} | - |"
    ]


def _latency(s: dict, t: dict) -> list[str]:
    added, parts = s["added_ms"], s["parts_p50_ms"]
    p50 = _verdict(t, "added latency p50 (ms)", "p50 ≤ 15")
    p99 = _verdict(t, "added latency p99 (ms)", "p99 ≤ 50")
    return [
        f"| added latency (submit → finished - L) | {s['rate']:g} jobs/s, L = "
        f"{s['model_latency_ms']} ms, {s['jobs']} jobs | p50 {_num(added['p50'])} / "
        f"p95 {_num(added['p95'])} / p99 {_num(added['p99'])} ms "
        f"| p50 parts: submit {_num(parts['submit_to_stored'])}, queue {_num(parts['queued'])}, "
        f"SDK+HTTP {_num(parts['sdk_and_http'])}, worker {_num(parts['worker_bookkeeping'])} ms "
        f"| - | {p50}; {p99} |"
    ]


def _enqueue(s: dict, r: dict, t: dict) -> list[str]:
    rows = [
        f"| enqueue (POST /v1/jobs) | {s['clients']} clients, {s['submits']} submits "
        f"| {_num(s['submits_per_s'])} submits/s | request p50 {_num(s['request_ms']['p50'])} ms; "
        f"API {_num(s['cpu_ms_per_submit'].get('api'))} ms CPU per submit "
        f"| - | {_verdict(t, 'single submits/s', '≥ 500')} |"
    ]
    if batch := s.get("batch"):
        rows.append(
            f"| enqueue (POST /v1/jobs/batch) | {batch['clients']} clients, {batch['accepted']} "
            f"jobs in batches of {batch['size']} | {_num(batch['jobs_per_s'])} jobs/s "
            f"| request p50 {_num(batch['request_ms']['p50'])} ms; API "
            f"{_num(batch['cpu_ms_per_submit'].get('api'))} ms CPU per job "
            f"| {_num(r.get('batch_over_single'))}x single | - |"
        )
    return rows


def _scaling(s: dict, t: dict) -> list[str]:
    steps = s["steps"]
    counts = "/".join(str(x["workers"]) for x in steps)
    rates = " / ".join(_num(x["jobs_per_s"]) for x in steps)
    ideals = " / ".join(_num(x["ideal_jobs_per_s"]) for x in steps)
    speedups = " / ".join(f"{x['speedup_vs_first']:.2f}x" for x in steps[1:])
    return [
        f"| scaling | {counts} proc x {s['concurrency']} threads | {rates} jobs/s "
        f"| ideal {ideals} | speed-up vs 1 proc {speedups} "
        f"| {_verdict(t, 'scaling 1 → 2 processes', '≥ 1.8x at 2')} |"
    ]


def _batch_api(s: dict) -> list[str]:
    return [
        f"| OpenAI batch create (POST /v1/batches) | {s['lines']:,} lines, "
        f"{_num(s['file_mib'])} MiB file | {_num(s['jobs_per_s'])} jobs/s stored and queued "
        f"({_num(s['create_s'], 2)} s) | API {_num(s['cpu_ms_per_job'].get('api'), 3)} ms CPU "
        f"per job, machine busy {_num(s.get('machine_busy_cores'))} cores; API RSS "
        f"{_num(s['api_rss_mib_at_rest'])} MiB at rest, peak "
        f"{_num(s['api_peak_rss_mib_upload'])} uploading / {_num(s['api_peak_rss_mib_create'])} "
        f"creating ({s['api_processes']} processes) | - | ≥ 5,000 jobs/s |"
    ]


def _memory(s: dict) -> list[str]:
    genq = s["throughput"]["genq"]
    rest, load = genq["rss_mib_at_rest"].values(), genq["rss_mib_under_load"].values()
    naive = s["throughput"].get("naive")
    baseline = (
        f"naive Celery, parent + {naive['processes']} children: "
        f"{_num(naive['rss_mib_at_rest'])} / {_num(naive['rss_mib_under_load'])} MiB in all"
        if naive
        else ""
    )
    return [
        f"| memory (VmRSS per worker process) | at rest / under load "
        f"| {_num(max(rest))} / {_num(max(load))} MiB | {baseline} | - | - |"
    ]


def _cpu(s: dict) -> list[str]:
    """CPU time per job: barely moved by other load on the machine, unlike jobs/s."""
    throughput = s["throughput"]
    run = throughput["genq"]
    genq = run["cpu_ms_per_job"]
    parts = []
    if "limit" in throughput:
        parts.append(f"asyncio loop {_num(throughput['limit']['cpu_ms_per_job'].get('harness'))}")
    if "naive" in throughput:
        parts.append(f"naive Celery {_num(throughput['naive']['cpu_ms_per_job'].get('workers'))}")
    return [
        f"| CPU per job (process CPU time) | latency-bound run | workers "
        f"{_num(genq.get('workers'))} ms (+ simulator {_num(genq.get('simulator'))} ms); "
        f"machine busy {_num(run.get('machine_busy_cores'))} cores "
        f"| {', '.join(parts)} ms (client side) | - | - |"
    ]


def _inflight(s: dict, t: dict) -> list[str]:
    """One process holding many model calls open: peak in flight, jobs/s, memory, CPU."""
    held = max(s["rss_mib_under_load"].values())
    within = s["claimed_within_s"]
    return [
        f"| in flight | {s['workers']} proc, --pool {s['pool']} --concurrency "
        f"{s['threads'] // s['workers']}, L = {s['latency_ms']} ms, {s['jobs']} jobs "
        f"| {s['peak_in_flight']} calls in flight at the simulator (peak); "
        f"{_num(s['jobs_per_s'])} jobs/s; peak RSS {_num(held)} MiB "
        f"| ideal min(C, N)/L = {_num(s['ideal_jobs_per_s'])} jobs/s; all started within "
        f"{_num(within['p100'], 2)} s (90% within {_num(within['p90'], 2)} s); "
        f"workers {_num(s['cpu_ms_per_job'].get('workers'))} ms CPU per job; "
        f"{_one_process_limits(s)} "
        f"| efficiency {_num(s['efficiency'], 2)}; genq/limit {_num(s['genq_over_limit'], 2)} "
        f"| {_verdict(t, 'calls in flight in one process', '≥ 900')}; "
        f"{_verdict(t, 'in-flight jobs/s (ideal 200)', '≥ 150 jobs/s')}; "
        f"{_verdict(t, 'in-flight peak RSS (MiB)', '≤ 300 MiB')} |"
    ]


def _one_process_limits(s: dict) -> str:
    """The in-flight baselines: one process each, no queue, no database (bench/inflight.py)."""
    asyncio, threads = s["limits"]["asyncio"], s["limits"]["threads"]
    loop_ms = _num(asyncio["cpu_ms_per_job"].get("harness"))
    return (
        f"asyncio + AsyncOpenAI: {_num(asyncio['jobs_per_s'])} jobs/s "
        f"({asyncio['peak_in_flight']} in flight, {loop_ms} ms CPU per call); "
        f"genq's SDK path on {threads['concurrency']} threads: "
        f"{_num(threads['jobs_per_s'])} jobs/s ({threads['peak_in_flight']} in flight, "
        f"all started within {_num(threads['started_within_s'], 2)} s, "
        f"{_num(threads['cpu_ms_per_job'])} ms CPU per call)"
    )


def markdown(report: dict) -> str:
    """The table, in the order the issue lists the measurements."""
    s, r = report["scenarios"], report["ratios"]
    t = {target["name"]: target for target in report["targets"]}
    rows = list(HEADER)
    if "throughput" in s:
        rows += _throughput(s["throughput"], r, t)
    if "peak" in s:
        rows += _peak(s["peak"], r)
    if "latency" in s:
        rows += _latency(s["latency"], t)
    if "enqueue" in s:
        rows += _enqueue(s["enqueue"], r, t)
    if "scaling" in s:
        rows += _scaling(s["scaling"], t)
    if "batch-api" in s:
        rows += _batch_api(s["batch-api"])
    if "throughput" in s:
        rows += _cpu(s) + _memory(s)
    if "inflight" in s:
        rows += _inflight(s["inflight"], t)
    for name, error in report.get("errors", {}).items():
        rows.append(f"| {name} | failed: {error.splitlines()[0]} | | | | |")
    m = report["machine"]
    rows.append("")
    rows.append(
        f"{m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, "
        f"{report['settings']['database']} database (a one-row commit: "
        f"{m.get('db_commit_ms_p50', '?')} ms), model {report['settings']['model']} "
        f"({report['settings']['max_tokens']} max tokens) on `genq simulator` over HTTP; "
        f"load average at start {m['load_average'][0]:.2f}."
    )
    return "\n".join(rows)
