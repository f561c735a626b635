"""Heartbeats: a worker process keeps renewing the leases of the jobs it is running.

A job whose worker dies stops being renewed; when its lease runs out the sweeper puts it back
on the queue. One thread per process renews every lease every third of the lease time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy.engine import Engine

from models.db import session_scope
from models.lifecycle import renew_lease

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
            for job_id, token in held.items():
                self._renew(job_id, token)

    def _renew(self, job_id: str, token: str) -> None:
        try:
            with session_scope(self.engine) as session:
                if not renew_lease(session, job_id=job_id, token=token, lease_s=self.lease_s):
                    log.warning("lease.lost", job_id=job_id)
        except Exception as exc:  # the database may be restarting: try again next beat
            log.warning("lease.renew_failed", job_id=job_id, error=type(exc).__name__)

    def stop(self) -> None:
        self._wake.set()
