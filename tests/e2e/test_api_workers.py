"""`genq api --workers N`: several API processes on one port, their metrics summed in one scrape."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import auth, new_key, process_start_time, wait_until

pytestmark = pytest.mark.e2e
JOB = {"kind": "text", "prompt": "Write a haiku about ports", "params": {"max_tokens": 16}}


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def metrics_dir_of(pids: list[int]) -> Path | None:
    """The PROMETHEUS_MULTIPROC_DIR the API processes were started with."""
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    return None


def submits_counted(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "genq_api_requests_total" and (
                labels["method"],
                labels["route"],
                labels["status"],
            ) == ("POST", "/v1/jobs", "202"):
                return sample.value
    return 0.0


def test_api_processes_share_the_port_and_one_scrape_counts_all_of_them(stack, settings):
    api = stack.api("--workers", "2")
    key = auth(new_key(settings.database_url))
    parent = stack.procs["api"].pid
    directory = wait_until(
        lambda: metrics_dir_of(children_of(parent)), what="the API processes' metrics directory"
    )
    served = 0

    def both_processes_served() -> bool:
        # a new connection per request: the kernel hands each to whichever process accepts it
        nonlocal served
        with httpx.Client(base_url=api, headers=key, timeout=10) as client:
            assert client.post("/v1/jobs", json=JOB).status_code == 202
        served += 1
        writers = {path.stem.rsplit("_", 1)[-1] for path in directory.glob("counter_*.db")}
        return len(writers) >= 2

    wait_until(both_processes_served, timeout_s=60, what="requests served by both processes")
    # Then one scrape, answered by either process, counts every submit of both
    scrape = httpx.get(f"{api}/metrics", timeout=10)
    assert scrape.status_code == 200
    assert submits_counted(scrape.text) == served
    jobs = httpx.get(f"{api}/v1/jobs", params={"limit": 100}, headers=key, timeout=10).json()
    assert len(jobs["data"]) == served
    # And when the supervisor is SIGKILLed (it can stop nothing), its API processes stop by
    # themselves (PR_SET_PDEATHSIG) instead of serving the port on as orphans
    children = {pid: process_start_time(pid) for pid in children_of(parent)}
    stack.procs["api"].kill()
    stack.procs["api"].wait()

    def survivors() -> list[int]:
        return [pid for pid, start in children.items() if process_start_time(pid) == start]

    try:
        wait_until(lambda: not survivors(), what=f"API processes {sorted(children)} to stop")
    finally:
        for pid in survivors():  # only processes this test started, by PID
            os.kill(pid, signal.SIGKILL)
