"""The in-flight scenario's second baseline: genq's own call path with nothing around it.

`python -m bench.thread_limit URL --jobs N --concurrency C --out FILE` makes N model calls from
one process through genq's provider (the sync openai SDK on the sharded transport of
worker/providers/http_shards.py) on a thread pool of C threads, as Celery's threads pool runs a
worker's tasks, with no queue, no database and no job records. What one process on this machine
can hold in flight with genq's design is this run's figure: genq's worker at the same setting
adds the queue, the claim and the end to every call. A warm-up wave first, as genq's workers
get, starts the threads and loads the SDK. The result is JSON in FILE (stdout is the run's log).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.config import BENCH_MAX_TOKENS, BENCH_MODEL, BENCH_OPENAI_KEY
from bench.http import prompt
from bench.measure import call_spans
from models.errors import ProviderError
from models.schemas import TextParams
from worker.providers.openai_provider import OpenAIProvider


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def calls(sim_url: str, *, jobs: int, concurrency: int, timeout_s: float) -> dict:
    """A warm-up wave of min(C, N) calls, then N calls timed from the first start to the last
    end; the process's CPU over the timed wave."""
    provider = OpenAIProvider(
        api_key=BENCH_OPENAI_KEY, base_url=f"{sim_url}/v1", timeout_s=timeout_s
    )
    params = TextParams(max_tokens=BENCH_MAX_TOKENS)
    spans: list[tuple[float, float]] = []
    errors = 0

    def one(index: int, tag: str, timed: bool) -> None:
        nonlocal errors
        messages = [{"role": "user", "content": prompt(index, tag)}]
        start = time.perf_counter()
        try:
            provider.generate_text(model=BENCH_MODEL, messages=messages, params=params)
        except ProviderError:
            errors += timed
            return
        if timed:
            spans.append((start, time.perf_counter()))  # list.append is atomic under the GIL

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda i: one(i, "thread-warm-up", False), range(min(concurrency, jobs))))
        cpu = _cpu_s()
        list(pool.map(lambda i: one(i, "thread-limit", True), range(jobs)))
        cpu = _cpu_s() - cpu
    if not spans:
        return {"jobs": jobs, "concurrency": concurrency, "errors": errors}
    return {
        **call_spans(spans, jobs=jobs, concurrency=concurrency, errors=errors),
        "cpu_ms_per_job": round(1000 * cpu / jobs, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim_url")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = calls(
        args.sim_url, jobs=args.jobs, concurrency=args.concurrency, timeout_s=args.timeout_s
    )
    args.out.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
