"""`genq dev` as real processes: every way it stops, stops what it started; a taken port stops it
before it starts anything."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import descendants
from tests.helpers import free_port, process_start_time, wait_until

#: genq dev does not care which database it talks to; SQLite keeps these tests quick
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def dev_argv(api_port: int, flower_port: int) -> list[str]:
    ports = ["--api-port", str(api_port), "--flower-port", str(flower_port)]
    return [sys.executable, "-m", "cli", "dev", *ports]


@dataclass
class Dev:
    proc: subprocess.Popen
    output: Path
    #: every process genq dev started, directly or not: pid -> start time
    started: dict[int, str]

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def pid_of(self, name: str) -> int:
        """The pid `genq dev` printed for one child (`processes: api (pid 123), …`)."""
        return int(re.search(rf"\b{name} \(pid (\d+)\)", self.log()).group(1))

    def alive(self) -> list[int]:
        return [pid for pid, start in self.started.items() if process_start_time(pid) == start]


@contextmanager
def running_dev(env: dict[str, str], cwd: Path) -> Iterator[Dev]:
    """`genq dev` running after its demo jobs; whatever of it survives the test is SIGKILLed by
    PID (only processes this test started)."""
    output = cwd / "dev.out"  # stdout and stderr: the test reads lines of both
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            dev_argv(free_port(), free_port()),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    dev = Dev(proc, output, {})
    try:
        wait_until(
            lambda: "running;" in dev.log() or proc.poll() is not None,
            timeout_s=240,
            what="genq dev to finish its demo",
        )
        assert proc.poll() is None, dev.log()
        dev.started = {p: process_start_time(p) for p in descendants(proc.pid) if p != proc.pid}
        assert {dev.pid_of(name) for name in ("api", "worker", "flower")} <= set(dev.started)
        yield dev
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in dev.alive():
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_every_child_before_dev_exits(env, tmp_path, signum):
    with running_dev(env, tmp_path) as dev:
        # When `timeout`, a process manager or a closing terminal signals genq dev
        dev.proc.send_signal(signum)
        # Then it exits 0 once API, worker and Flower are gone: no orphan is left
        assert dev.proc.wait(timeout=60) == 0, dev.log()
        assert dev.alive() == []
        assert f"stopping ({signum.name})" in dev.log()


def test_children_of_a_killed_dev_stop_by_themselves(env, tmp_path):
    with running_dev(env, tmp_path) as dev:
        # When genq dev is SIGKILLed (it can clean up nothing)
        dev.proc.kill()
        dev.proc.wait()
        # Then the kernel tells each child (PR_SET_PDEATHSIG) and each one stops
        wait_until(lambda: dev.alive() == [], what=f"children {dev.alive()} to stop")


def test_a_dead_child_is_named_in_one_line_and_the_others_are_stopped(env, tmp_path):
    with running_dev(env, tmp_path) as dev:
        worker = dev.pid_of("worker")
        # When the worker dies
        os.kill(worker, signal.SIGKILL)
        # Then genq dev says which child died and how, stops the others and exits 1
        assert dev.proc.wait(timeout=60) == 1
        said = f"genq dev: worker (pid {worker}) was killed by SIGKILL; stopping the others"
        assert any(line.startswith(said) for line in dev.log().splitlines()), dev.log()
        assert dev.alive() == []


@pytest.mark.parametrize("taken", ["api", "flower"])
def test_a_taken_port_stops_dev_before_it_starts_anything(env, tmp_path, taken):
    # Given something (an earlier genq dev, say) listening on the API or the Flower port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"api": free_port(), "flower": free_port(), taken: port}
        # When genq dev is asked to use it
        result = subprocess.run(
            dev_argv(ports["api"], ports["flower"]),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    # Then it refuses in one line naming the port, and started nothing (no child, no log)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"port {port} ({'API' if taken == 'api' else 'Flower'})" in lines[0]
    assert "another genq may still be running there" in lines[0]
    assert not (tmp_path / ".genq").exists()
