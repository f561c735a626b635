"""One global rate limit across worker processes: 4 `genq worker`s, 120 RPM on gpt-4o-mini.

Without the limiter, 16 worker threads against a 20 ms simulator would send the 80 calls in about
a tenth of a second. With it, the calls are paced through Redis at 2 per second in total,
whichever process sends them. The check counts recorded call times per window; it asserts no
speed. `attempts.started_at` is stamped by the Runner after the limiter admitted the call, right
before the HTTP request goes out (the simulator answers every call, so calls = attempts).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from sqlmodel import select

from models.attempts import Attempt
from models.db import get_engine, session_scope
from tests.helpers import auth, new_key, private_redis, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]
MODEL = "gpt-4o-mini"
RPM = 120
#: enough calls to need 40 s at 120 RPM, from 16 threads (4 workers x 4), far more than it needs
JOBS = 80
WORKERS = ("rl1", "rl2", "rl3", "rl4")
#: window lengths checked, in seconds (a 60 s window would need 2 minutes of calls)
WINDOWS_S = (5, 10, 20)
#: the limiter's burst (BURST_S = 1 s of rate = 2 calls may go back to back after a pause),
#: plus 1 because started_at is stamped in each worker a few ms after Redis admitted the call,
#: so two admissions 0.5 s apart can be recorded slightly closer together
TOLERANCE = 3
OPENAI_KEY = "sk-test-ratelimit-abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture(name="private_redis")
def private_redis_fixture() -> Iterator[str]:
    """A redis-server of this test's own, so no other process consumes its queue."""
    with private_redis() as url:
        yield url


def busiest(starts: list[datetime], window_s: float) -> int:
    """The most calls that started within any window of `window_s` seconds."""
    times = sorted(t.timestamp() for t in starts)
    return max(sum(1 for t in times if s <= t < s + window_s) for s in times)


def test_four_workers_stay_within_one_120_rpm_limit(stack, settings, private_redis):
    # Given the simulator, four worker processes sharing a 120 RPM limit on gpt-4o-mini, the API
    stack.env["GENQ_REDIS_URL"] = private_redis
    sim = stack.simulator("--latency-ms", "20")
    env = {
        "GENQ_PROVIDER": "openai",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": f"{sim}/v1",
        "GENQ_RATE_LIMITS": f"{MODEL}={RPM}rpm",
    }
    for name in WORKERS:
        stack.worker(name, env=env, wait=False)
    for name in WORKERS:
        stack.ready(name)
        assert "ratelimit.configured" in stack.log(name), stack.log(name)
    client = httpx.Client(
        base_url=stack.api(), headers=auth(new_key(settings.database_url)), timeout=10
    )

    # When 80 jobs are submitted at once
    body = {"kind": "text", "prompt": "Slogan", "model": MODEL, "params": {"max_tokens": 8}}
    ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(JOBS)]

    # Then all of them succeed, the work spread over all four processes
    def all_done() -> bool:
        listed = client.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()
        return len(listed["data"]) == JOBS

    wait_until(all_done, timeout_s=90, what=f"{JOBS} jobs at {RPM} RPM")
    with session_scope(get_engine(settings.database_url)) as session:
        attempts = list(session.exec(select(Attempt).where(Attempt.job_id.in_(ids))))
    assert len(attempts) == JOBS and {a.model for a in attempts} == {MODEL}
    assert {a.worker.split("@")[0] for a in attempts} == set(WORKERS)
    assert httpx.get(f"{sim}/_simulator/stats").json()["calls"] == {"chat": JOBS}

    # And no window saw more calls than the limit allows for it, plus the stated tolerance
    starts = [a.started_at for a in attempts]
    measured = {w: busiest(starts, w) for w in WINDOWS_S}
    span_s = (max(starts) - min(starts)).total_seconds()
    print(f"\n{JOBS} calls over {span_s:.1f} s; busiest windows (calls): {measured}")
    for window_s, calls in measured.items():
        allowed = RPM * window_s / 60 + TOLERANCE
        assert calls <= allowed, f"{calls} calls in {window_s} s > {allowed} (all: {measured})"
