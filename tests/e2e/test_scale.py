"""Many workers, as real processes: the API, three workers and Flower on Redis and PostgreSQL.

Shows that a batch is spread over all workers (attempt rows name the worker), that every job
finishes, that each worker's own metrics endpoint counts exactly its share, and that Flower
lists the workers and tasks behind a login and never shows a prompt.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from models.attempts import Attempt
from models.db import get_engine, session_scope
from tests.helpers import auth, free_port, new_key, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]
WORKERS = ("w1", "w2", "w3")
#: enough jobs, each slow enough, that no single worker can drain the queue alone
BATCH = 36
SLOW = {"GENQ_OFFLINE_LATENCY_MS": "300"}
PROMPT = "Tagline for the zebra-crossing campaign {i}"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """One worker's metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def succeeded_in(samples: dict[tuple[str, tuple], float]) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "genq_jobs_total" and ("status", "succeeded") in labels
    )


def flower_get(url: str, path: str, login: str | None) -> httpx.Response:
    basic = tuple(login.split(":", 1)) if login else None
    return httpx.get(f"{url}{path}", auth=basic, timeout=10)


def test_three_workers_share_a_batch_watched_by_flower_and_metrics(stack, settings):
    # Given the API, Flower with a login, and three workers with their own metrics ports
    api = stack.api()
    login = f"ops:{secrets.token_urlsafe(9)}"
    flower = stack.flower(env={"GENQ_FLOWER_BASIC_AUTH": login})
    ports = {name: free_port() for name in WORKERS}
    for name in WORKERS:
        stack.worker(name, "--metrics-port", str(ports[name]), env=SLOW, wait=False)
    for name in WORKERS:
        stack.ready(name)
    wait_until(
        lambda: len(flower_get(flower, "/api/workers?refresh=1", login).json()) == 3,
        what="Flower to see three workers",
    )
    secret = new_key(settings.database_url)
    client = httpx.Client(base_url=api, headers=auth(secret), timeout=10)

    # When a batch is submitted
    ids = [
        client.post("/v1/jobs", json={"kind": "text", "prompt": PROMPT.format(i=i)}).json()["id"]
        for i in range(BATCH)
    ]

    # Then every job succeeds, and all three workers ran some of them
    def all_finished():
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs) else None

    assert {job["status"] for job in wait_until(all_finished, timeout_s=180, what="the batch")} == {
        "succeeded"
    }
    with session_scope(get_engine(settings.database_url)) as session:
        ran_by = Counter(
            worker.split("@")[0] for worker in session.exec(select(Attempt.worker)).all()
        )
    assert set(ran_by) == set(WORKERS) and sum(ran_by.values()) == BATCH, ran_by

    # And each worker's metrics endpoint counts exactly the jobs that worker ran
    for name in WORKERS:
        samples = scrape(ports[name])
        assert succeeded_in(samples) == ran_by[name], name
        assert samples[("genq_queue_depth", (("queue", "text"),))] == 0
        assert samples[("genq_broker_up", ())] == 1

    # And Flower lists the workers and the tasks with credentials, 401 without
    workers = flower_get(flower, "/api/workers?refresh=1", login).json()
    assert {w.split("@")[0] for w in workers} == set(WORKERS)
    for hostname, info in workers.items():
        assert {q["name"] for q in info["active_queues"]} == {"text", "images"}, hostname
    tasks = wait_until(
        lambda: _finished_tasks(flower, login, BATCH), what="Flower to record the tasks"
    )
    assert {task["name"] for task in tasks.values()} == {"genq.generate_text"}
    assert sorted(task["args"] for task in tasks.values()) == sorted(f"['{i}']" for i in ids)
    shown = json.dumps(tasks)
    assert "zebra" not in shown and secret not in shown
    for path in ("/api/workers", "/api/tasks", "/"):
        assert flower_get(flower, path, None).status_code == 401, path
        assert flower_get(flower, path, "ops:wrong").status_code == 401, path

    # And `genq status workers` lists the same live workers and their queues
    listed = subprocess.run(
        [sys.executable, "-m", "cli", "status", "workers", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {row["worker"].split("@")[0] for row in rows} == set(WORKERS)
    assert all(row["queues"] == ["images", "text"] and row["concurrency"] == 4 for row in rows)


def _finished_tasks(flower: str, login: str, expected: int) -> dict | None:
    tasks = flower_get(flower, "/api/tasks", login).json()
    done = {k: t for k, t in tasks.items() if t["state"] == "SUCCESS"}
    return done if len(done) == expected else None
