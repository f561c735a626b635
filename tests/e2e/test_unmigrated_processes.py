"""`genq api` (one process or several) and `genq worker` on a database behind the code: they
refuse to start, in one line.

Started anyway they would fail every request or job later (a missing table or column); the check
is one read of `alembic_version` at start, in the command's own process (uvicorn's API processes
never run it). On SQLite and PostgreSQL, empty and one revision behind the head.
"""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from alembic.script import ScriptDirectory

from models.migrate import NOT_MIGRATED, alembic_config, current_revision, upgrade
from tests.helpers import free_port, genq, wait_until

pytestmark = pytest.mark.e2e

COMMANDS = {
    "api": lambda: ("api", "--port", str(free_port())),
    "api --workers 2": lambda: ("api", "--port", str(free_port()), "--workers", "2"),
    "worker": lambda: ("worker", "--concurrency", "1", "--without-mingle", "--without-gossip"),
}


def one_behind_head() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    down = script.get_revision(script.get_current_head()).down_revision
    assert isinstance(down, str)
    return down


def process_env(database_url: str, redis_url: str, tiktoken_dir) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))},
        "GENQ_DATABASE_URL": database_url,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_TIKTOKEN_CACHE_DIR": str(tiktoken_dir),
        "GENQ_PROVIDER": "offline",
    }


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("state", ["empty", "one revision behind"])
def test_a_long_running_process_refuses_a_database_behind_the_code(
    empty_database_url, clean_redis, tiktoken_dir, tmp_path, command, state
):
    # Given a database never migrated, or migrated to the revision before the head
    if state == "one revision behind":
        upgrade(empty_database_url, one_behind_head())
    before = current_revision(empty_database_url)
    # When the API or a worker starts on it
    result = genq(
        *COMMANDS[command](),
        env=process_env(empty_database_url, clean_redis, tiktoken_dir),
        cwd=tmp_path,
        timeout=90,
    )
    # Then it exits at once, with one line naming the fix (no uvicorn or Celery line: it
    # started no process), and changed nothing
    assert result.returncode == 1, result.stderr[-3000:]
    assert lines(result) == [f"genq: {NOT_MIGRATED}"], result.stderr[-3000:]
    assert current_revision(empty_database_url) == before


#: the test's own database is not used (both processes are pointed at a silent one)
@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def test_an_api_and_a_worker_whose_database_does_not_answer_yet_start_and_say_so(
    stack, clean_redis
):
    # Given a PostgreSQL URL nothing listens on (the database is still starting, say)
    silent = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/genq"
    stack.env["GENQ_DATABASE_URL"] = silent
    # When an API and a worker start on it (both at once, then waited for)
    port = free_port()
    stack.start("api", "api", "--port", str(port), "--workers", "2")
    stack.worker(wait=False)
    stack.ready("worker")

    def readiness() -> httpx.Response | None:
        assert stack.procs["api"].poll() is None, stack.log("api")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.HTTPError:
            return None

    # Then both start anyway (an outage, not a refusal), and say so; the API is not ready
    ready = wait_until(readiness, what="the API", timeout_s=120)
    assert ready.status_code == 503
    assert ready.json()["detail"].startswith("database unavailable")
    for name in ("api", "worker"):
        assert "genq: WARNING: cannot reach the database (OperationalError" in stack.log(name)
