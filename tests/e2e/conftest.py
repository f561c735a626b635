"""Real processes: `genq api`, `genq worker`, `genq simulator`, started and stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_until


@dataclass
class Stack:
    """Processes of one test, sharing an environment; each one logs to its own file."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed at stop)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.logs,
        )
        self.procs[name] = proc
        return proc

    def api(self, *args: str) -> str:
        port = free_port()
        self.start("api", "api", "--port", str(port), *args)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._answers(f"{url}/readyz", "api"), what="the API")
        return url

    def simulator(self, *args: str) -> str:
        port = free_port()
        self.start("simulator", "simulator", "--port", str(port), *args)
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: self._answers(f"{url}/v1/models", "simulator", ok=(200, 401)),
            what="the simulator",
        )
        return url

    def flower(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Start `genq flower` on a free loopback port; its URL once /healthcheck answers."""
        port = free_port()
        self.start("flower", "flower", f"--port={port}", "--address=127.0.0.1", *args, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._answers(f"{url}/healthcheck", "flower"), what="Flower")
        return url

    def worker(
        self, name: str = "worker", *args: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        self.start(
            name,
            "worker",
            "--hostname",
            f"{name}@%h",
            "--concurrency",
            "4",
            "--without-mingle",
            "--without-gossip",
            *args,
            env=env,
        )
        if wait:
            self.ready(name)

    def ready(self, name: str) -> None:
        """Wait until worker `name` says it is ready (start several, then wait for each; several
        starting at once on a loaded 2-core machine can take over a minute)."""
        wait_until(
            lambda: b"ready" in self.log(name).encode() or self._dead(name),
            timeout_s=120,
            what=f"worker {name}",
        )
        assert not self._dead(name), self.log(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(self.log(name) for name in self.procs)

    def _dead(self, name: str) -> bool:
        return self.procs[name].poll() is not None

    def _answers(self, url: str, name: str, ok=(200,)) -> bool:
        assert not self._dead(name), f"{name} exited:\n{self.log(name)}"
        try:
            return httpx.get(url, timeout=1).status_code in ok
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def stack(env, tmp_path):
    fast_retries = {
        "GENQ_PROVIDER": "offline",
        "GENQ_RETRY_INITIAL_S": "0.01",
        "GENQ_RETRY_MAX_S": "0.05",
    }
    running = Stack(env={**env, **fast_retries}, logs=tmp_path)
    yield running
    running.stop()


@pytest.fixture
def env(settings) -> dict[str, str]:
    """The environment of a `genq` command run against this test's database and Redis."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))},
        "GENQ_DATABASE_URL": settings.database_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_TIKTOKEN_CACHE_DIR": str(settings.tiktoken_cache_dir),
    }
