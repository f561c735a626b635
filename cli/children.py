"""Child processes that never outlive the genq command that started them (Linux).

Each child leads a process group of its own, so stopping it also reaches what it started in
turn (uvicorn's worker processes), and asks the kernel for SIGTERM when its parent dies, so even
a SIGKILLed parent leaves no orphans. Everything is addressed by PID / PGID, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

#: Linux prctl option: the signal a process receives when its parent dies
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Get SIGTERM when the parent dies; exit at once if it already has (Linux, else no-op).

    Runs in the child: as a Popen `preexec_fn`, or first thing in a spawned process.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect: nobody would stop us


def spawn(argv: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `argv` as a process group leader that dies with us, logging to `log`."""
    parent = os.getpid()
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, and no terminal signals of ours
            preexec_fn=lambda: die_with_parent(parent),
        )


def _exited(proc: subprocess.Popen) -> bool:
    """The leader has exited; it stays a zombie (not reaped), so its PGID stays ours."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def stop_all(procs: list[subprocess.Popen], timeout_s: float = 15) -> None:
    """SIGTERM each leader once (its own graceful shutdown), then SIGKILL what is left of its
    group: the leader if it overstayed `timeout_s`, and any child of it that it left behind."""
    for proc in procs:
        if not _exited(proc):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while not all(_exited(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:
        if proc.returncode is None:  # not reaped yet: the group id cannot have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def describe_exit(returncode: int) -> str:
    """`exited with code 2`, or `was killed by SIGKILL` (Popen reports a signal as -N)."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
