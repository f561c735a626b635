"""worker/ratelimit_redis.py against real Redis: the Lua scripts' pacing, token correction,
the adaptive factor shared by all workers, and pass-through when Redis is down.

Redis time moves on while a test runs, so waits are checked within a few milliseconds.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from structlog.testing import capture_logs

from models.ratelimits import RateLimit
from tests.helpers import free_port, start_redis_server
from worker import ratelimit_redis
from worker.ratelimit_redis import RedisLimiter, keys_of, limiter_client

MODEL = "gpt-4o-mini"
#: Redis time keeps running between two script calls of one test
SLACK_S = 0.05


@pytest.fixture
def client(clean_redis) -> redis.Redis:
    """The test session's own Redis, flushed: no other suite can touch the limiter's keys."""
    return redis.Redis.from_url(clean_redis, socket_connect_timeout=2)


def limiter(client: redis.Redis, max_wait_s: float = 60.0, **limit: int) -> RedisLimiter:
    return RedisLimiter(client, {MODEL: RateLimit(**limit)}, max_wait_s=max_wait_s)


def factor_in_redis(client: redis.Redis) -> float:
    return float(client.hget(keys_of(MODEL)[2], "f") or 1)


def test_rpm_paces_calls_after_a_one_second_burst(client):
    # Given 120 RPM: one call every 0.5 s, a burst of one second's worth (two calls)
    rl = limiter(client, rpm=120)
    # When three calls ask at once
    first, second, third = (rl._ask(MODEL, rl.limits[MODEL], 1, force=False) for _ in range(3))
    # Then two go, and the third is told to wait about half a second, without being charged
    assert first.admitted and second.admitted and not third.admitted
    assert 0.5 - SLACK_S < third.wait_s <= 0.5
    again = rl._ask(MODEL, rl.limits[MODEL], 1, force=False)
    assert not again.admitted and again.wait_s <= third.wait_s


def test_acquire_sleeps_until_the_slot_in_short_steps(client):
    # Given 600 RPM (one call every 0.1 s, a burst of 10) and a recording sleep
    rl = limiter(client, rpm=600)
    sleeps: list[float] = []
    rl.sleep = lambda s: (sleeps.append(s), time.sleep(s))
    # When 13 calls are made in a row
    started = time.monotonic()
    waited = [rl.acquire(MODEL, 0) for _ in range(13)]
    # Then the burst goes without a wait, the last three are paced one slot (0.1 s) apart (a
    # loaded machine may make the calls themselves slower, never faster), no sleep exceeds 1 s
    assert waited[:10] == [0.0] * 10 or sum(waited[:10]) < SLACK_S
    assert time.monotonic() - started >= 0.3 - SLACK_S and sum(waited[10:]) > 0, waited
    assert sleeps and max(sleeps) <= ratelimit_redis.MAX_SLEEP_S + ratelimit_redis.JITTER_S


def test_tokens_are_charged_by_estimate_and_corrected_by_usage(client):
    # Given 6000 TPM: 100 tokens a second, a burst of 100 tokens
    rl = limiter(client, tpm=6000)
    spec = rl.limits[MODEL]
    # When a call estimated at 100 tokens goes, a call of 50 more must wait about half a second
    assert rl._ask(MODEL, spec, 100, force=False).admitted
    blocked = rl._ask(MODEL, spec, 50, force=False)
    assert not blocked.admitted and 0.5 - SLACK_S < blocked.wait_s <= 0.5
    # When the first call settles having used only 20 tokens, the 80 unused ones come back
    rl.settle(MODEL, estimated=100, used=20)
    assert rl._ask(MODEL, spec, 50, force=False).admitted
    # When a call used 200 tokens more than estimated, the next one waits those out (~2 s)
    rl.settle(MODEL, estimated=10, used=210)
    blocked = rl._ask(MODEL, spec, 1, force=False)
    assert not blocked.admitted and blocked.wait_s > 1.6


def test_a_call_bigger_than_the_burst_goes_when_idle_and_leaves_a_debt(client):
    # Given 6000 TPM (a 100-token burst), and an idle model
    rl = limiter(client, tpm=6000)
    spec = rl.limits[MODEL]
    # When one call estimates 1000 tokens (10 s of budget), it still goes
    assert rl._ask(MODEL, spec, 1000, force=False).admitted
    # Then the next call waits out the debt (about 9 s beyond the burst)
    blocked = rl._ask(MODEL, spec, 1, force=False)
    assert not blocked.admitted and 9 - SLACK_S < blocked.wait_s <= 9.01


def test_rpm_and_tpm_both_bind_and_a_refusal_charges_neither(client):
    rl = limiter(client, rpm=60, tpm=60000)
    spec = rl.limits[MODEL]
    # Tokens allow it but requests do not (60 RPM: one call, then 1 s), and vice versa
    assert rl._ask(MODEL, spec, 10, force=False).admitted
    refused = rl._ask(MODEL, spec, 10, force=False)
    assert not refused.admitted and refused.wait_s > 0.9
    tokens_tat = float(client.get(keys_of(MODEL)[1]))
    rl._ask(MODEL, spec, 10, force=False)
    assert float(client.get(keys_of(MODEL)[1])) == tokens_tat  # nothing charged on refusal


def test_429_halves_the_rate_for_every_worker_and_successes_bring_it_back(client, monkeypatch):
    # Given two workers' limiters on the same Redis, 120 RPM
    one, other = limiter(client, rpm=120), limiter(client, rpm=120)
    # When one of them sees a 429
    one.on_rate_limited(MODEL)
    # Then the factor is 0.5 in Redis, and a second 429 from calls in flight changes nothing
    assert factor_in_redis(client) == 0.5
    other.on_rate_limited(MODEL)
    assert factor_in_redis(client) == 0.5
    # And the other worker now paces at 60 RPM: one call, then about 1 s
    spec = other.limits[MODEL]
    assert other._ask(MODEL, spec, 1, force=False).admitted
    blocked = other._ask(MODEL, spec, 1, force=False)
    assert not blocked.admitted and blocked.factor == 0.5 and 1 - SLACK_S < blocked.wait_s <= 1
    # When successes follow, each gives back 5% of the base rate, up to 100%
    for expected in (0.55, 0.6, 0.65):
        other.on_success(MODEL)
        assert factor_in_redis(client) == pytest.approx(expected)
    for _ in range(20):
        other.on_success(MODEL)
    assert factor_in_redis(client) == 1.0


def test_repeated_429s_stop_at_the_floor(client, monkeypatch):
    monkeypatch.setattr(ratelimit_redis, "DECREASE_COOLDOWN_S", 0)
    rl = limiter(client, rpm=120)
    for _ in range(6):
        rl.on_rate_limited(MODEL)
    assert factor_in_redis(client) == pytest.approx(ratelimit_redis.FLOOR)
    assert client.pttl(keys_of(MODEL)[2]) > 0  # an untouched factor expires back to 100%


def test_success_at_full_rate_does_not_ask_redis(client):
    rl = limiter(client, rpm=120)
    rl.on_success(MODEL)
    assert client.dbsize() == 0


def test_unlimited_model_never_touches_redis(client):
    rl = limiter(client, rpm=120)
    assert rl.acquire("gpt-4o", 5000) == 0.0
    rl.settle("gpt-4o", estimated=5000, used=10)
    rl.on_rate_limited("gpt-4o")
    assert client.dbsize() == 0


def test_max_wait_gives_up_charges_and_logs(client):
    # Given 1 RPM (a call a minute) and a wait cap of 0.3 s
    rl = limiter(client, max_wait_s=0.3, rpm=1)
    assert rl.acquire(MODEL, 1) < SLACK_S
    # When a second call waits past the cap
    with capture_logs() as logs:
        waited = rl.acquire(MODEL, 1)
    # Then it goes anyway after about the cap, logged, and is charged (the next one waits longer)
    assert 0.3 <= waited < 0.3 + 0.1
    assert [e["event"] for e in logs] == ["ratelimit.gave_up"]
    assert rl._ask(MODEL, rl.limits[MODEL], 1, force=False).wait_s > 100


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A URL with nothing listening yet, and a function that starts redis-server there."""
    port = free_port()
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(start_redis_server(port))

    yield f"redis://127.0.0.1:{port}/0", start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_down_lets_calls_through_logs_once_and_recovers(private_redis):
    # Given a limiter (1 RPM) whose Redis does not answer
    url, start_redis = private_redis
    rl = RedisLimiter(limiter_client(url), {MODEL: RateLimit(rpm=1, tpm=10)})
    # When calls keep coming
    with capture_logs() as logs:
        waits = [rl.acquire(MODEL, 100) for _ in range(5)]
        rl.settle(MODEL, estimated=100, used=5)
        rl._skip_redis_until = 0  # past the retry pause: Redis is asked again, still down
        rl.on_rate_limited(MODEL)
        rl.on_success(MODEL)
    # Then every call passes at once (no wait beyond one failed connect) and one line says why
    assert max(waits) < 1.5 and sum(waits[1:]) < SLACK_S
    assert [e["event"] for e in logs] == ["ratelimit.redis_unavailable"]
    # When Redis comes back and the retry pause is over
    start_redis()
    rl._skip_redis_until = 0
    with capture_logs() as logs:
        first = rl._ask(MODEL, rl.limits[MODEL], 1, force=False)
        second = rl._ask(MODEL, rl.limits[MODEL], 1, force=False)
    # Then limits hold again (1 RPM: the second call waits about a minute), and that is logged
    assert first.admitted and not second.admitted and second.wait_s > 59
    assert [e["event"] for e in logs] == ["ratelimit.redis_back"]


def test_many_limiters_in_threads_share_one_budget(client):
    """Eight limiters (as eight processes would) against 1200 RPM: 20/s, a burst of 20."""
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        rl = limiter(redis.Redis(connection_pool=client.connection_pool), rpm=1200)
        for _ in range(8):
            rl.acquire(MODEL, 0)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # No window of 1 s holds more than the rate (20) + the burst (20) + 1 for timing at the edge
    stamps.sort()
    worst = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert len(stamps) == 64 and worst <= 41, worst
