"""Recently verified API keys, in process, for at most `GENQ_AUTH_CACHE_S` seconds.

Every request names its key; looking it up costs a pooled connection, a query and a thread hop:
~1 ms of CPU of a submit's ~6 ms. A key found live is kept here by the SHA-256 of its secret
(the secret itself is never held) and served from memory until its entry is `ttl_s` old, then
read again. A key changed with `genq keys` (revoked, given a webhook secret) is dropped at once
by its id (`evict`, from the `genq:keys:changed` channel, models/key_events.py); only when that
message is lost does it still work for up to `ttl_s` seconds. `0` turns the cache off. Unknown
and revoked secrets are never kept: a new key works at once, and guessing fills nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from models.keys import ApiKey

#: keys held at most (the whole cache starts again when full: entries are cheap to re-read)
MAX_KEYS = 10_000


class VerifiedKeys:
    """Live keys by the digest of their secret, each for `ttl_s` seconds after it was read."""

    def __init__(
        self, ttl_s: float, *, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ):
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        #: counts evictions: a read that began before one must not put back what it read
        self.evictions = 0
        #: `put` runs in the thread pool, `evict` in the event loop
        self._lock = threading.Lock()

    def get(self, digest: str) -> ApiKey | None:
        """The key verified for this digest less than `ttl_s` ago, else None."""
        entry = self._keys.get(digest)
        if entry is None:
            return None
        read_at, key = entry
        if self._clock() - read_at >= self.ttl_s:
            self._keys.pop(digest, None)
            return None
        return key

    def put(self, digest: str, key: ApiKey, *, read_after: int | None = None) -> None:
        """Keep a key just read live from the database (does nothing when the cache is off).

        `read_after` is `evictions` as it was before the read: if any eviction came since, the
        row read may predate the change that caused it, so it is not kept."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if read_after is not None and read_after != self.evictions:
                return
            if len(self._keys) >= self.max_keys:
                self._keys.clear()
            self._keys[digest] = (self._clock(), key)

    def evict(self, key_id: str) -> None:
        """Forget the key with this id (it changed): its next request reads it again."""
        with self._lock:
            self.evictions += 1
            for digest in [d for d, (_, key) in self._keys.items() if key.id == key_id]:
                del self._keys[digest]

    def clear(self) -> None:
        """Forget every key: changes may have been missed (the channel was away)."""
        with self._lock:
            self.evictions += 1
            self._keys.clear()
