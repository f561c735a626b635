"""PostgreSQL restarted mid-run (a private server on its own port): no job lost or stuck."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from api.main import create_app
from models.db import get_engine, session_scope
from models.jobs import Job
from models.migrate import upgrade
from tests.helpers import auth, free_port, new_key, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


class PrivatePostgres:
    """initdb + pg_ctl as the `postgres` user, listening on loopback only."""

    def __init__(self, root: Path):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        assert found, "PostgreSQL server binaries are required for this test"
        self.bin, self.root, self.port = Path(found[-1]), root, free_port()
        self.data = root / "data"
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres")
        self._as_postgres(
            self.bin / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )

    def _as_postgres(self, *argv) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            self.bin / "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-w",
            "-m",
            "fast",
            "-l",
            self.root / "pg.log",
            action,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def private_postgres(tmp_path):
    server = PrivatePostgres(Path("/tmp") / f"genq-pg-{tmp_path.name}")
    server.ctl("start")
    yield server
    server.ctl("stop")
    shutil.rmtree(server.root, ignore_errors=True)


def test_jobs_survive_a_postgres_restart(stack, settings, private_postgres):
    url = private_postgres.url
    upgrade(url)
    pg = settings.model_copy(update={"database_url": url})
    stack.env.update(
        {
            "GENQ_DATABASE_URL": url,
            "GENQ_LEASE_S": "6",
            "GENQ_SWEEP_INTERVAL_S": "1",
            "GENQ_REDISPATCH_AFTER_S": "8",
            "GENQ_OFFLINE_LATENCY_MS": "100",
        }
    )
    stack.worker("w1")
    secret = new_key(url)
    with TestClient(create_app(pg)) as client:
        ids = [
            client.post(
                "/v1/jobs", json={"kind": "text", "prompt": f"p{i}"}, headers=auth(secret)
            ).json()["id"]
            for i in range(60)
        ]

    def done() -> int:
        try:
            with session_scope(get_engine(url)) as session:
                return session.exec(
                    select(func.count()).select_from(Job).where(Job.status == "succeeded")
                ).one()
        except Exception:
            return 0

    wait_until(lambda: done() >= 10, timeout_s=120, what="10 jobs before the restart")
    private_postgres.ctl("restart")
    assert done() < len(ids), "the restart came too late to test anything"
    wait_until(
        lambda: done() == len(ids),
        timeout_s=180,
        what="every job to succeed after the PostgreSQL restart",
    )
    with session_scope(get_engine(url)) as session:
        assert (
            session.exec(
                select(func.count()).select_from(Job).where(Job.status != "succeeded")
            ).one()
            == 0
        )
    get_engine(url).dispose()
