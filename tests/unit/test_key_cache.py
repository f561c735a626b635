"""The verified-key cache: an entry lives `ttl_s`, only live keys are kept, the size is bounded."""

from __future__ import annotations

from api.key_cache import VerifiedKeys
from models.keys import ApiKey


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key(name: str = "k") -> ApiKey:
    return ApiKey(name=name, prefix="genq_x", secret_hash=name * 4)


def test_a_key_is_served_until_its_entry_is_ttl_old():
    clock = Clock()
    cache = VerifiedKeys(5, clock=clock)
    live = key()
    cache.put("digest", live)
    clock.now += 4.9
    assert cache.get("digest") is live
    clock.now += 0.1
    assert cache.get("digest") is None
    # and it stays gone (read again from the database, then put again)
    clock.now -= 1
    assert cache.get("digest") is None


def test_an_unknown_digest_is_a_miss():
    assert VerifiedKeys(5).get("nothing") is None


def test_ttl_zero_keeps_nothing():
    cache = VerifiedKeys(0)
    cache.put("digest", key())
    assert cache.get("digest") is None


def test_the_cache_starts_again_when_full():
    cache = VerifiedKeys(60, max_keys=3)
    for digest in "abc":
        cache.put(digest, key(digest))
    cache.put("d", key("d"))
    assert [cache.get(d) is not None for d in "abcd"] == [False, False, False, True]


def test_evict_drops_only_that_keys_entry():
    cache = VerifiedKeys(60)
    changed, other = key("a"), key("b")
    cache.put("da", changed)
    cache.put("db", other)
    cache.evict(changed.id)
    assert cache.get("da") is None
    assert cache.get("db") is other


def test_clear_drops_every_entry():
    cache = VerifiedKeys(60)
    cache.put("da", key("a"))
    cache.put("db", key("b"))
    cache.clear()
    assert cache.get("da") is None
    assert cache.get("db") is None


def test_a_read_begun_before_an_eviction_is_not_kept():
    # a row read before the change was committed (and its message evicted the key) is stale
    cache = VerifiedKeys(60)
    stale = key()
    read_after = cache.evictions
    cache.evict(stale.id)
    cache.put("digest", stale, read_after=read_after)
    assert cache.get("digest") is None
    # a read begun after it is kept
    cache.put("digest", stale, read_after=cache.evictions)
    assert cache.get("digest") is stale
