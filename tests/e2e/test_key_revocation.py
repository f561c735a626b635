"""`genq keys revoke` against `genq api --workers 2`: every API process drops the key at once
(the `genq:keys:changed` channel), and when that message is lost the TTL still bounds it."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.e2e.test_api_workers import children_of, metrics_dir_of
from tests.helpers import auth, free_port, genq, wait_until

#: PostgreSQL only: the channel and the cache do not depend on the database (the key cache's
#: integration tests run on both), and each case starts `genq api --workers 2` (~40 s)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]


def answers_by_process(directory: Path, status: int) -> dict[str, float]:
    """Per API process (its counter file), the `GET /v1/jobs` answers with this status. A file
    a process is creating this instant (still empty: prometheus_client opens, then sizes it) is
    skipped; the caller polls."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        total = 0.0
        try:
            metrics = MultiProcessCollector.merge([str(path)], accumulate=True)
        except struct.error:
            continue
        for metric in metrics:
            for sample in metric.samples:
                labels = sample.labels
                if sample.name == "genq_api_requests_total" and (
                    labels.get("method"),
                    labels.get("route"),
                    labels.get("status"),
                ) == ("GET", "/v1/jobs", str(status)):
                    total += sample.value
        counts[path.stem.rsplit("_", 1)[-1]] = total
    return counts


def get_jobs(api: str, key: dict[str, str]) -> int:
    # a new connection per request: the kernel hands each to whichever process accepts it
    with httpx.Client(base_url=api, headers=key, timeout=10) as client:
        return client.get("/v1/jobs").status_code


def served_by_both(api: str, key: dict[str, str], directory: Path, status: int) -> bool:
    assert get_jobs(api, key) == status
    counts = answers_by_process(directory, status)
    return len([c for c in counts.values() if c > 0]) >= 2


def only_401_until_both_answered(api: str, key: dict[str, str], directory: Path) -> None:
    """Requests until both processes have answered 401: every one is 401, none is a 200."""
    served = answers_by_process(directory, 200)
    wait_until(
        lambda: served_by_both(api, key, directory, 401),
        timeout_s=60,
        what="401 from both API processes",
    )
    assert answers_by_process(directory, 200) == served


def start_api(stack, ttl_s: int) -> tuple[str, Path]:
    """`genq api --workers 2` keeping verified keys `ttl_s`, and its metrics directory."""
    stack.env["GENQ_AUTH_CACHE_S"] = str(ttl_s)
    api = stack.api("--workers", "2")
    parent = stack.procs["api"].pid
    directory = wait_until(
        lambda: metrics_dir_of(children_of(parent)), what="the API processes' metrics directory"
    )
    return api, directory


def key_used_on_both_processes(stack, env: dict[str, str], ttl_s: int):
    """A key made with the real CLI and served (so cached) by both API processes."""
    api, directory = start_api(stack, ttl_s)
    created = genq("keys", "create", "revoked-soon", "--json", env=env)
    assert created.returncode == 0, created.stderr
    row = json.loads(created.stdout)
    key = auth(row["secret"])
    wait_until(
        lambda: served_by_both(api, key, directory, 200),
        timeout_s=60,
        what="the key served by both API processes",
    )
    return api, directory, row["id"], key


def test_a_revoked_key_is_401_on_every_api_process_at_once(stack, env):
    # Given two API processes that keep a verified key 60 s, both having served the key
    api, directory, key_id, key = key_used_on_both_processes(stack, env, 60)
    # When the real CLI revokes it
    revoked = genq("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert "warning" not in revoked.stderr
    # Then, once the message is there (a bounded wait, far inside the 60 s TTL), every request
    # on either process is 401: none is served from memory any more
    wait_until(lambda: get_jobs(api, key) == 401, timeout_s=5, what="the first 401")
    only_401_until_both_answered(api, key, directory)


def test_a_lost_message_is_still_bounded_by_the_ttl(stack, env):
    # Given two API processes that keep a verified key 3 s, both having served the key
    ttl_s = 3
    api, directory, key_id, key = key_used_on_both_processes(stack, env, ttl_s)
    # When the CLI revokes it while Redis is out of its reach (the message is lost)
    away = {
        **env,
        "GENQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "GENQ_AUTH_CACHE_S": str(ttl_s),
    }
    revoked = genq("keys", "revoke", key_id, "--json", env=away)
    committed = time.monotonic()
    # Then the revocation stands, and the CLI says on stderr what it could not do
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked"] is True
    assert "could not tell the API processes" in revoked.stderr
    assert f"GENQ_AUTH_CACHE_S ({ttl_s} s here)" in revoked.stderr
    # And once the TTL has passed since the commit, no process serves the key from memory:
    # every request on either process is 401 (entries were put before the commit, so they
    # are TTL old by then; 0.5 s covers a read begun just before it)
    time.sleep(max(0.0, committed + ttl_s + 0.5 - time.monotonic()))
    only_401_until_both_answered(api, key, directory)
