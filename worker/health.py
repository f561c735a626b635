"""Model health across jobs: a model that keeps failing is cooled down, then probed.

The circuit per model: *closed* (normal); after `failures` retryable failures within
`cooldown_s` it *opens* for `cooldown_s` and jobs move to their fallbacks; when that passes,
one job at a time may *probe* it (half-open); a success closes it again.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

import redis
import structlog

log = structlog.get_logger("genq.worker")


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


#: every failure recorded through Redis is announced here (the model's id), so that a success
#: clears the shared keys only when a failure may be pending (see RedisHealth.record_success)
FAILED_CHANNEL = "genq:health:failed"
#: the listener pings this often when idle, and starts again when it hears nothing for 3 pings
LISTEN_PING_S = 1.0


class RedisHealth:
    """The same circuit shared by every worker process through Redis keys with expiry.

    A success clears the model's keys (its failure count, open circuit, probe) for every
    process. Most successes find nothing to clear, so each process remembers the models it
    cleared itself (`_clean`) and listens on FAILED_CHANNEL for failures recorded by any
    process since: a success on a clean model sends nothing, and neither does asking whether a
    clean model is available (a circuit opens only after an announced failure); a failure
    announced anywhere, a probe or an open circuit seen here, a lost subscription or a fork
    make the next success clear again. A failure announced in the milliseconds before a success
    can reach the listener after it; that success then leaves it, and the next success clears
    it (and a job asking meanwhile may call a model just opened, as it could before it opened).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        failures: int = 5,
        cooldown_s: float = 30.0,
        ping_s: float = LISTEN_PING_S,
    ):
        self.redis, self.failures = client, failures
        self.ttl_ms = max(int(cooldown_s * 1000), 1)
        self.ping_s = ping_s
        self._clean: set[str] = set()
        self._lock = threading.Lock()
        #: the process whose listener is subscribed (None: none is, so every success clears)
        self._listening: int | None = None
        self._listener_pid: int | None = None
        self._stop = threading.Event()

    def _keys(self, model: str) -> tuple[str, str, str]:
        base = f"genq:health:{model}"
        return f"{base}:failures", f"{base}:open", f"{base}:probe"

    def available(self, model: str) -> bool:
        """As the protocol says; no round trip while this process knows the circuit closed: it
        cleared it itself and no failure (every opening follows one) was announced since."""
        if model in self._clean and self._listening == os.getpid():
            return True
        _failures, opened, probe = self._keys(model)
        try:
            # one round trip: is the circuit open now, and was it open in the last periods
            pipe = self.redis.pipeline(transaction=False)
            is_open, was_open = pipe.exists(opened).exists(f"{opened}:was").execute()
            if is_open or was_open:
                self._dirty(model)  # shared state to clear at the next success
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
        self._dirty(model)
        try:
            pipe = self.redis.pipeline()
            pipe.incr(failures)
            pipe.pexpire(failures, self.ttl_ms)
            pipe.publish(FAILED_CHANNEL, model)
            count = pipe.execute()[0]
            if count >= self.failures or self.redis.exists(f"{opened}:was"):
                pipe = self.redis.pipeline()
                pipe.set(opened, "1", px=self.ttl_ms)
                pipe.set(f"{opened}:was", "1", px=self.ttl_ms * 10)
                pipe.delete(probe)
                # announced again with the opening: a process whose success cleared the keys
                # between the two pipelines (it had heard the first announcement) must not
                # take the circuit opened after it for clean
                pipe.publish(FAILED_CHANNEL, model)
                pipe.execute()
        except redis.RedisError:
            return

    def record_success(self, model: str) -> None:
        """Close the model's circuit for everyone, unless this process knows it is closed: it
        cleared it itself and no failure was announced since (no round trip then)."""
        self._listen()
        with self._lock:
            if model in self._clean and self._listening == os.getpid():
                return
            # marked before the DELETE: a failure announced after this mark unmarks it
            self._clean.add(model)
        failures, opened, probe = self._keys(model)
        try:
            self.redis.delete(failures, opened, f"{opened}:was", probe)
        except redis.RedisError:
            self._dirty(model)

    def close(self) -> None:
        """Stop listening (tests; a worker's listener ends with its process)."""
        self._stop.set()

    def _dirty(self, model: str) -> None:
        with self._lock:
            self._clean.discard(model)

    def _listen(self) -> None:
        """Start this process's listener (again after a fork: threads do not survive it)."""
        pid = os.getpid()
        if self._listener_pid == pid:
            return
        with self._lock:
            if self._listener_pid == pid:
                return
            self._listener_pid, self._listening = pid, None
            self._clean.clear()
        name = "genq-health-listener"
        threading.Thread(target=self._listen_forever, args=(pid,), name=name, daemon=True).start()

    def _listen_forever(self, pid: int) -> None:
        while not self._stop.is_set():
            try:
                self._listen_once(pid)
            except (redis.RedisError, OSError, ValueError):
                pass  # Redis away or the connection dropped: subscribe again
            except Exception:  # a bug or an unexpected client state: keep listening, but say so
                log.exception("health.listener_failed")
            finally:
                with self._lock:  # failures announced meanwhile are unheard: forget the clean
                    self._listening = None
                    self._clean.clear()
            self._stop.wait(self.ping_s)

    def _listen_once(self, pid: int) -> None:
        """Subscribe, then unmark each model a failure is announced for, until the connection
        fails or stays silent for three pings (a dead peer that never closed it)."""
        pubsub = self.redis.pubsub()
        try:
            pubsub.subscribe(FAILED_CHANNEL)
            heard = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=self.ping_s)
                now = time.monotonic()
                if message is None:
                    if now - heard > 3 * self.ping_s:
                        return
                    pubsub.ping()
                    continue
                heard = now
                if message["type"] == "subscribe":
                    with self._lock:  # from here on every failure is heard
                        self._clean.clear()
                        self._listening = pid
                elif message["type"] == "message":
                    data = message["data"]
                    self._dirty(data.decode() if isinstance(data, bytes) else data)
        finally:
            pubsub.close()
