"""This worker process's beat: while it beats, the messages it took stay its own.

The sweeper gives back the unacked messages of a process silent for a lease (models/reserved.py),
so the beat runs in a thread of its own every third of the lease, like the lease heartbeat
(worker/lease.py), from when the worker is ready until it has stopped: a sweep that stalls, or a
warm shutdown finishing long calls, does not make a live worker look dead.
"""

from __future__ import annotations

import threading

import redis
import structlog

from models.reserved import beat, mark_stopped

log = structlog.get_logger("genq.liveness")


class Liveness:
    def __init__(self, client: redis.Redis, *, interval_s: float):
        self.redis, self.interval_s = client, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            try:
                beat(self.redis)
            except Exception as exc:  # Redis restarting: the next beat tries again
                log.warning("liveness.beat_failed", error=type(exc).__name__)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="genq-liveness", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """The worker has stopped (kombu gave back what it held at close). Its entry stays: a
        lease later the sweeper gives back anything left and forgets it; marked as stopped
        cleanly, it lost no popped message (models/popped.py)."""
        self._stop.set()
        try:
            mark_stopped(self.redis)
        except redis.RedisError as exc:  # then it counts as killed: a look for nothing
            log.warning("liveness.stop_unmarked", error=type(exc).__name__)
