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
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from models.attempts import Attempt
from models.db import get_engine, session_scope
from models.queue import ALL_QUEUES
from tests.e2e.conftest import Stack
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
Samples = dict[tuple[str, tuple], float]


@dataclass
class Cluster:
    stack: Stack
    client: httpx.Client
    secret: str
    flower: str
    login: str
    metrics_ports: dict[str, int]


@pytest.fixture
def cluster(stack, settings) -> Cluster:
    """The API, Flower with a login, and three workers with their own metrics ports."""
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
    return Cluster(stack, client, secret, flower, login, ports)


def test_three_workers_share_a_batch_watched_by_flower_and_metrics(cluster, settings):
    # When a batch is submitted
    ids = [
        cluster.client.post("/v1/jobs", json={"kind": "text", "prompt": PROMPT.format(i=i)}).json()[
            "id"
        ]
        for i in range(BATCH)
    ]
    # Then every job succeeds, and all three workers ran some of them
    jobs = wait_until(lambda: all_finished(cluster.client, ids), timeout_s=180, what="the batch")
    assert {job["status"] for job in jobs} == {"succeeded"}
    ran_by = workers_of_attempts(settings.database_url)
    assert set(ran_by) == set(WORKERS) and sum(ran_by.values()) == BATCH, ran_by
    # And each worker's metrics, Flower and `genq status workers` agree with the database
    assert_each_worker_counts_its_share(cluster.metrics_ports, ran_by)
    assert_flower_lists_workers_and_tasks(cluster, ids)
    assert_status_lists_the_workers(cluster.stack.env)


def all_finished(client: httpx.Client, ids: list[str]) -> list[dict] | None:
    jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs) else None


def workers_of_attempts(database_url: str) -> Counter:
    """How many attempts each worker (the name before `@`) recorded."""
    with session_scope(get_engine(database_url)) as session:
        names = session.exec(select(Attempt.worker)).all()
    return Counter(name.split("@")[0] for name in names)


def scrape(port: int) -> Samples:
    """One worker's metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_each_worker_counts_its_share(ports: dict[str, int], ran_by: Counter) -> None:
    for name, port in ports.items():
        samples = scrape(port)
        succeeded = sum(
            value
            for (metric, labels), value in samples.items()
            if metric == "genq_jobs_total" and ("status", "succeeded") in labels
        )
        assert succeeded == ran_by[name], name
        assert samples[("genq_queue_depth", (("queue", "text"),))] == 0
        assert samples[("genq_broker_up", ())] == 1


def flower_get(url: str, path: str, login: str | None) -> httpx.Response:
    basic = tuple(login.split(":", 1)) if login else None
    return httpx.get(f"{url}{path}", auth=basic, timeout=10)


def assert_flower_lists_workers_and_tasks(cluster: Cluster, ids: list[str]) -> None:
    """With the login: the three workers and every task, whose only argument is the job id."""
    workers = flower_get(cluster.flower, "/api/workers?refresh=1", cluster.login).json()
    assert {w.split("@")[0] for w in workers} == set(WORKERS)
    for hostname, info in workers.items():
        assert {q["name"] for q in info["active_queues"]} == set(ALL_QUEUES), hostname
    tasks = wait_until(lambda: finished_tasks(cluster, len(ids)), what="Flower to record the tasks")
    assert {task["name"] for task in tasks.values()} == {"genq.generate_text"}
    assert sorted(task["args"] for task in tasks.values()) == sorted(f"['{i}']" for i in ids)
    shown = json.dumps(tasks)
    assert "zebra" not in shown and cluster.secret not in shown
    for path in ("/api/workers", "/api/tasks", "/"):
        assert flower_get(cluster.flower, path, None).status_code == 401, path
        assert flower_get(cluster.flower, path, "ops:wrong").status_code == 401, path


def finished_tasks(cluster: Cluster, expected: int) -> dict | None:
    tasks = flower_get(cluster.flower, "/api/tasks", cluster.login).json()
    done = {k: t for k, t in tasks.items() if t["state"] == "SUCCESS"}
    return done if len(done) == expected else None


def assert_status_lists_the_workers(env: dict[str, str]) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "cli", "status", "workers", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {row["worker"].split("@")[0] for row in rows} == set(WORKERS)
    assert all(row["queues"] == sorted(ALL_QUEUES) and row["concurrency"] == 4 for row in rows)
