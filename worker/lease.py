"""Heartbeats: a worker process keeps renewing the leases of the jobs it is running.

A job whose worker dies stops being renewed; when its lease runs out the sweeper puts it back
on the queue. One thread per process renews every lease every third of the lease time, all of
them in one transaction (one statement per 500 jobs).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy.engine import Engine

from models.db import session_scope
from models.lifecycle import renew_leases

log = structlog.get_logger("genq.lease")


class LeaseKeeper:
    def __init__(self, engine: Engine, *, lease_s: int):
        self.engine, self.lease_s = engine, lease_s
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, job_id: str, token: str) -> Iterator[None]:
        """Renew this claim's lease for as long as the block runs."""
        with self._lock:
            self._held[job_id] = token
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="genq-lease", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(job_id, None)

    def _loop(self) -> None:
        while not self._wake.wait(self.lease_s / 3):
            with self._lock:
                held = dict(self._held)
            if held:
                self._renew(held)

    def _renew(self, held: dict[str, str]) -> None:
        try:
            with session_scope(self.engine) as session:
                renewed = renew_leases(session, held=held, lease_s=self.lease_s)
        except Exception as exc:  # the database may be restarting: try again next beat
            log.warning("lease.renew_failed", jobs=len(held), error=type(exc).__name__)
            return
        lost = held.keys() - renewed
        if lost:
            with self._lock:  # a job that ended since the snapshot did not lose its claim
                lost &= self._held.keys()
        for job_id in lost:
            log.warning("lease.lost", job_id=job_id)

    def stop(self) -> None:
        self._wake.set()
