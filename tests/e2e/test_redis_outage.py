"""Redis (a private redis-server on its own port) stops while jobs are submitted, then returns.

Every submit that got 202 must complete; a submit that failed must have stored nothing.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select

from models.db import get_engine, session_scope
from models.jobs import Job
from tests.helpers import auth, free_port, new_key, start_redis_server, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]


def test_jobs_accepted_during_a_redis_outage_all_complete(stack, settings):
    port = free_port()
    server = start_redis_server(port)
    try:
        private = {
            "GENQ_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "GENQ_SWEEP_INTERVAL_S": "1",
            "GENQ_REDISPATCH_AFTER_S": "8",
        }
        stack.env.update(private)
        api = stack.api()
        stack.worker("w1")
        client = httpx.Client(
            base_url=api, headers=auth(new_key(settings.database_url)), timeout=30
        )

        def submit(i: int) -> httpx.Response:
            return client.post("/v1/jobs", json={"kind": "text", "prompt": f"p{i}"})

        before = [submit(i) for i in range(10)]
        server.terminate()
        server.wait(timeout=10)
        during = [submit(i) for i in range(10, 20)]
        assert client.get("/readyz").status_code == 503
        server = start_redis_server(port)  # back, empty: messages queued before the outage are gone
        after = [submit(i) for i in range(20, 25)]
        accepted = [r.json()["id"] for r in before + during + after if r.status_code == 202]
        refused = [r for r in before + during + after if r.status_code != 202]
        assert all(r.status_code == 503 for r in refused)
        assert len(accepted) >= 15  # before and after the outage every submit is accepted

        def finished() -> bool:
            return all(
                client.get(f"/v1/jobs/{i}").json()["status"] == "succeeded" for i in accepted
            )

        wait_until(finished, timeout_s=120, what="every accepted job to succeed")
        with session_scope(get_engine(settings.database_url)) as session:
            stored = session.exec(select(func.count()).select_from(Job)).one()
        assert stored == len(accepted)  # a refused submit stored nothing
    finally:
        server.terminate()
        server.wait(timeout=10)
