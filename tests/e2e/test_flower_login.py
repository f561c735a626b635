"""`genq flower` refuses to run open unless told so explicitly, and then says it loudly; its task
list is built from the workers' task events."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from tests.helpers import auth, free_port, new_key, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def genq_flower(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "flower", f"--port={free_port()}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("extra_env", "code", "needle"),
    [
        ({}, 1, "GENQ_FLOWER_BASIC_AUTH=user:password"),
        ({"GENQ_FLOWER_BASIC_AUTH": "admin"}, 2, "invalid setting GENQ_FLOWER_BASIC_AUTH"),
    ],
)
def test_flower_without_a_valid_login_does_not_start(stack, extra_env, code, needle):
    result = genq_flower({**stack.env, **extra_env})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code and len(lines) == 1 and needle in lines[0], result.stderr


def test_unauthenticated_flower_starts_with_a_warning(stack):
    url = stack.flower("--unauthenticated")
    assert "WITHOUT authentication" in stack.log("flower")
    assert httpx.get(url, timeout=10).status_code == 200


def test_flowers_task_list_shows_a_job_even_when_its_worker_stops_at_once(stack, settings):
    """Task events are flushed a moment apart (worker/task_events.py) and at shutdown: a job's
    task reaches Flower's list as succeeded though its worker was stopped right after it."""
    flower = stack.flower(env={"GENQ_FLOWER_BASIC_AUTH": "ops:pw"})
    url = stack.api()
    stack.worker()
    client = httpx.Client(base_url=url, headers=auth(new_key(settings.database_url)), timeout=10)
    job_id = client.post("/v1/jobs", json={"kind": "text", "prompt": "a line"}).json()["id"]
    wait_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
        what="the job",
    )
    stack.procs["worker"].send_signal(signal.SIGTERM)
    stack.procs["worker"].wait(timeout=60)

    def task_state() -> str | None:
        tasks = httpx.get(f"{flower}/api/tasks", auth=("ops", "pw"), timeout=5).json()
        states = [t["state"] for t in tasks.values() if job_id in str(t.get("args"))]
        return states[0] if states and states[0] == "SUCCESS" else None

    assert wait_until(task_state, what="the job's task in Flower") == "SUCCESS"
