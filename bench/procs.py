"""The processes a benchmark starts (simulators, API, workers, the naive baseline), by PID.

Each child logs to its own file; each is stopped by its own PID (SIGTERM, then SIGKILL), never by
name, because other people's workers may run on the same machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from celery import Celery

from cli.children import die_with_parent

#: how long a process may take to answer after it was started (a busy 2-core box is slow)
START_TIMEOUT_S = 90.0


class BenchError(RuntimeError):
    """A benchmark phase could not run (a process died, a wait timed out)."""


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Fleet:
    """Children of one run, sharing a base environment; stop() ends them all by PID."""

    env: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """A child logging to `<log_dir>/<name>.log`, with this run's environment."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{name}.log"
        parent = os.getpid()
        with open(path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                # SIGTERM when the harness dies, so no worker outlives its run (Linux)
                preexec_fn=lambda: die_with_parent(parent),
            )
        child = Child(name, popen, path)
        self.children.append(child)
        return child

    def genq(self, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        """`genq ARGS…` as a child process, exactly as a user would start it."""
        return self.start(name, [sys.executable, "-m", "cli", *args], env)

    def simulator(self, latency_ms: int, *, wait: bool = True) -> tuple[str, Child]:
        """`genq simulator` with a fixed latency; `wait=False` returns before it answers."""
        port = free_port()
        child = self.genq(
            f"simulator-{latency_ms}ms",
            "simulator",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        )
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_http(f"{url}/v1/models", child)
        return url, child

    def api(self, *, workers: int = 1, wait: bool = True) -> tuple[str, Child]:
        port = free_port()
        child = self.genq("api", "api", "--port", str(port), "--workers", str(workers))
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_http(f"{url}/readyz", child)
        return url, child

    def stop(self, child: Child, timeout_s: float = 20) -> None:
        """SIGTERM (Celery's warm shutdown), SIGKILL after `timeout_s`."""
        self.stop_many([child], timeout_s)

    def stop_many(self, children: list[Child], timeout_s: float = 20) -> None:
        """Signal each once (a second SIGTERM stalls Celery's warm shutdown), then wait for all."""
        for child in children:
            if child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in children:
            try:
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
            if child in self.children:
                self.children.remove(child)

    def stop_all(self) -> None:
        self.stop_many(list(reversed(self.children)))


def free_port() -> int:
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_alive(child: Child) -> None:
    """Fail at once, with the end of its log, when a child has exited: never wait on a corpse."""
    if child.popen.poll() is not None:
        raise BenchError(
            f"{child.name} exited with code {child.popen.returncode}; "
            f"log {child.log}:\n{child.tail()}"
        )


def wait_for(check: Callable[[], bool], *, what: str, children: list[Child], timeout_s: float):
    """Poll `check` until true; fail early if a child dies, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        for child in children:
            ensure_alive(child)
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def wait_http(url: str, child: Child) -> None:
    """Until `url` answers (401 counts: the simulator wants a key), or the child dies."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code in (200, 401)
        except httpx.HTTPError:
            return False

    wait_for(answers, what=child.name, children=[child], timeout_s=START_TIMEOUT_S)


def control_app(redis_url: str) -> Celery:
    """A producer/control-only Celery app on the bench broker (pings, add_consumer)."""
    app = Celery("genq-bench", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    return app


def wait_ready(control: Celery, hostnames: list[str], children: list[Child]) -> None:
    """Until every worker answers a broadcast ping (its consumer is up)."""
    missing = set(hostnames)

    def all_answered() -> bool:
        for reply in control.control.ping(destination=list(missing), timeout=0.5) or []:
            missing.difference_update(reply)
        return not missing

    wait_for(
        all_answered,
        what=f"workers {sorted(hostnames)}",
        children=children,
        timeout_s=START_TIMEOUT_S,
    )


def hostname(name: str) -> str:
    """The Celery node name `name@host` that `--hostname name@%h` expands to."""
    return f"{name}@{socket.gethostname()}"


def rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def descendants(pid: int) -> list[int]:
    """The process and all its descendants (Celery prefork children), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """(total VmRSS in KiB, process count) of a process and its children."""
    pids = descendants(pid)
    return sum(rss_kib(p) for p in pids), len(pids)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (Celery prefork workers)."""
    return sum(cpu_seconds(p) for p in descendants(pid))
