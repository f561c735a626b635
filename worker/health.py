"""Model health across jobs: a model that keeps failing is cooled down, then probed.

The circuit per model: *closed* (normal); after `failures` retryable failures within
`cooldown_s` it *opens* for `cooldown_s` and jobs move to their fallbacks; when that passes,
one job at a time may *probe* it (half-open); a success closes it again.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis


class ModelHealth(Protocol):
    def available(self, model: str) -> bool:
        """May a job call this model now (closed, or this caller won the half-open probe)?"""
        ...

    def record_failure(self, model: str) -> None: ...

    def record_success(self, model: str) -> None: ...


class LocalHealth:
    """One process's view, for tests and single-process use."""

    def __init__(self, *, failures: int = 5, cooldown_s: float = 30.0, clock=time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._recent: dict[str, list[float]] = {}
        self._open_until: dict[str, float] = {}
        self._probing: set[str] = set()
        self._lock = threading.Lock()

    def available(self, model: str) -> bool:
        with self._lock:
            until = self._open_until.get(model)
            if until is None:
                return True
            if self.clock() < until or model in self._probing:
                return False
            self._probing.add(model)  # half-open: this caller probes
            return True

    def record_failure(self, model: str) -> None:
        now = self.clock()
        with self._lock:
            self._probing.discard(model)
            recent = [t for t in self._recent.get(model, []) if now - t < self.cooldown_s]
            recent.append(now)
            self._recent[model] = recent
            if len(recent) >= self.failures or model in self._open_until:
                self._open_until[model] = now + self.cooldown_s

    def record_success(self, model: str) -> None:
        with self._lock:
            self._recent.pop(model, None)
            self._open_until.pop(model, None)
            self._probing.discard(model)


class RedisHealth:
    """The same circuit shared by every worker process through Redis keys with expiry."""

    def __init__(self, client: redis.Redis, *, failures: int = 5, cooldown_s: float = 30.0):
        self.redis, self.failures = client, failures
        self.ttl_ms = max(int(cooldown_s * 1000), 1)

    def _keys(self, model: str) -> tuple[str, str, str]:
        base = f"genq:health:{model}"
        return f"{base}:failures", f"{base}:open", f"{base}:probe"

    def available(self, model: str) -> bool:
        _failures, opened, probe = self._keys(model)
        try:
            # one round trip: is the circuit open now, and was it open in the last periods
            pipe = self.redis.pipeline(transaction=False)
            is_open, was_open = pipe.exists(opened).exists(f"{opened}:was").execute()
            if is_open:
                return False
            if not was_open:
                return True
            # the cooldown passed: one caller per cooldown period may probe
            return bool(self.redis.set(probe, "1", nx=True, px=self.ttl_ms))
        except redis.RedisError:
            return True  # no shared view: never block work on it

    def record_failure(self, model: str) -> None:
        failures, opened, probe = self._keys(model)
        try:
            pipe = self.redis.pipeline()
            pipe.incr(failures)
            pipe.pexpire(failures, self.ttl_ms)
            count = pipe.execute()[0]
            if count >= self.failures or self.redis.exists(f"{opened}:was"):
                pipe = self.redis.pipeline()
                pipe.set(opened, "1", px=self.ttl_ms)
                pipe.set(f"{opened}:was", "1", px=self.ttl_ms * 10)
                pipe.delete(probe)
                pipe.execute()
        except redis.RedisError:
            return

    def record_success(self, model: str) -> None:
        failures, opened, probe = self._keys(model)
        try:
            self.redis.delete(failures, opened, f"{opened}:was", probe)
        except redis.RedisError:
            return
