"""Global per-model rate limits (RPM and TPM), shared by every worker process and host via Redis.

Why GCRA: Celery's own `rate_limit` is per worker (N workers = N times the limit), so the state must
live in Redis and be read and written in one atomic step (a Lua script). GCRA — the "virtual
scheduling" form of a token bucket — keeps one number per model and dimension: the theoretical
arrival time (TAT) of the next call. Each call pushes it forward by `cost * 60 / limit` seconds
(cost = 1 request, or its tokens); a call may go when that leaves the TAT at most `BURST_S`
ahead of now. So calls are paced evenly (120 RPM = one every 0.5 s, two at once at most) rather
than let through as 120 at the top of each minute, which is what makes an upstream per-minute
limit hold over every window. A call costing more than the burst alone (a big `max_tokens`)
goes when the bucket is idle and leaves a debt that later calls wait out, so it never starves.

Tokens are charged with the caller's estimate and corrected by `settle`: unused tokens move the
TAT back (never before now), extra tokens move it forward. Time comes from Redis (`TIME`), so
the clocks of the hosts do not matter.

Adaptive: a 429 multiplies the model's rate by `DECREASE` (floor `FLOOR`), at most once per
`DECREASE_COOLDOWN_S` because the calls already in flight answer 429 too; each success adds
`STEP` of the base rate back up to 100%. The factor lives in Redis, so every worker slows down
together. If Redis cannot be reached, calls pass unlimited (logged once): a limiter outage must
not stop all work, and the provider's own 429s plus retries still protect it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from models.catalogue import Catalogue, get_catalogue
from models.ratelimits import RateLimit, parse_rate_limits, resolve_limits
from models.settings import Settings

log = structlog.get_logger("genq.ratelimit")

#: burst a limit allows, in seconds of its rate: 1 s at 120 RPM lets 2 calls go back to back
BURST_S = 1.0
#: longest single sleep before asking again (the rate may have recovered meanwhile)
MAX_SLEEP_S = 1.0
#: shortest sleep, so a wait that rounds to zero never spins
MIN_SLEEP_S = 0.005
#: random extra sleep, so waiters woken for the same slot do not all ask at the same instant
JITTER_S = 0.01
#: a 429 multiplies the model's effective rate by this, down to FLOOR of the configured rate
DECREASE, FLOOR = 0.5, 0.1
#: each success gives back this share of the configured rate
STEP = 0.05
#: 429s this soon after a decrease belong to the same overload (calls already in flight)
DECREASE_COOLDOWN_S = 2.0
#: a lowered factor nobody touches for this long expires: the rate is back to 100%
FACTOR_TTL_S = 600
#: after a Redis error, calls pass without asking Redis for this long
REDIS_RETRY_S = 5.0
#: a slow Redis must not hold every provider call for long
REDIS_TIMEOUT_S = 0.5
KEY_PREFIX = "genq:ratelimit"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""
_FACTOR = "local factor = tonumber(redis.call('HGET', KEYS[3], 'f') or '1')\n"

#: KEYS: requests TAT, tokens TAT, factor hash. ARGV: rpm, tpm, tokens, burst ms, force (0/1).
#: Returns {admitted 0/1, ms until a call would be admitted, factor}; charges only if admitted.
ACQUIRE_LUA = (
    _NOW
    + _FACTOR
    + """
local burst, wait, plans = tonumber(ARGV[4]), 0, {}
local function plan(key, limit, cost)
  if limit <= 0 or cost <= 0 then return end
  local interval = 60000 / (limit * factor)
  local tat = tonumber(redis.call('GET', key) or '0')
  local new_tat = math.max(tat, now) + cost * interval
  wait = math.max(wait, new_tat - math.max(burst, cost * interval) - now)
  plans[#plans + 1] = {key, new_tat}
end
plan(KEYS[1], tonumber(ARGV[1]), 1)
plan(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
if wait > 0 and ARGV[5] ~= '1' then
  return {0, tostring(wait), tostring(factor)}
end
for _, p in ipairs(plans) do
  redis.call('SET', p[1], tostring(p[2]), 'PX', math.ceil(p[2] - now + burst))
end
return {1, tostring(math.max(wait, 0)), tostring(factor)}
"""
)

#: KEYS: as ACQUIRE_LUA. ARGV: tpm, used - estimated tokens, burst ms.
SETTLE_LUA = (
    _NOW
    + _FACTOR
    + """
local interval = 60000 / (tonumber(ARGV[1]) * factor)
local delta = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
local new_tat
if delta > 0 then
  new_tat = math.max(tat, now) + delta * interval
elseif tat > now then
  new_tat = math.max(now, tat + delta * interval)
else
  return 0
end
redis.call('SET', KEYS[2], tostring(new_tat), 'PX', math.ceil(new_tat - now + tonumber(ARGV[3])))
return 1
"""
)

#: KEYS: as ACQUIRE_LUA (only the factor hash is used). ARGV: 'down' | 'up', decrease, floor, step,
#: cooldown ms, ttl ms. Returns the factor now in force.
ADAPT_LUA = (
    _NOW
    + _FACTOR
    + """
if ARGV[1] == 'down' then
  local last = tonumber(redis.call('HGET', KEYS[3], 'down_at') or '0')
  if now - last < tonumber(ARGV[5]) then return tostring(factor) end
  factor = math.max(tonumber(ARGV[3]), factor * tonumber(ARGV[2]))
  redis.call('HSET', KEYS[3], 'f', tostring(factor), 'down_at', tostring(now))
else
  if factor >= 1 then return '1' end
  factor = math.min(1, factor + tonumber(ARGV[4]))
  redis.call('HSET', KEYS[3], 'f', tostring(factor))
end
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return tostring(factor)
"""
)


def limiter_client(url: str) -> redis.Redis:
    """A client that fails fast: one immediate retry (a stale pooled connection), no backoff.

    redis-py's default retries with backoff for seconds, which would hold every provider call
    while Redis is down instead of letting it through.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),
    )


def keys_of(model: str) -> list[str]:
    """The model's Redis keys; the `{model}` hash tag keeps them in one Redis Cluster slot."""
    base = f"{KEY_PREFIX}:{{{model}}}"
    return [f"{base}:requests", f"{base}:tokens", f"{base}:factor"]


@dataclass(frozen=True)
class Decision:
    """What the acquire script answered: go now, or how long until a call could go."""

    admitted: bool
    wait_s: float
    factor: float


class RedisLimiter:
    """The Runner's `Limiter` (worker/ratelimit.py), enforced across processes through Redis."""

    def __init__(
        self,
        client: redis.Redis,
        limits: dict[str, RateLimit],
        *,
        max_wait_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.limits = limits
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.clock = clock
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._adapt = client.register_script(ADAPT_LUA)
        #: last factor seen per model: a success at 100% needs no Redis round trip
        self._factor: dict[str, float] = {}
        self._skip_redis_until = 0.0
        self._redis_down = False

    @classmethod
    def from_settings(cls, settings: Settings, catalogue: Catalogue | None = None) -> RedisLimiter:
        """Limits from the catalogue, overridden by GENQ_RATE_LIMITS; state in GENQ_REDIS_URL."""
        catalogue = catalogue or get_catalogue(settings.catalogue_path)
        overrides = parse_rate_limits(settings.rate_limits)
        known = {spec.id for spec in catalogue} | {settings.moderation_model}
        unknown = sorted(set(overrides) - known)
        if unknown:
            log.warning("ratelimit.unknown_models", models=unknown)
        limits = resolve_limits(catalogue, overrides)
        if limits:
            log.info(
                "ratelimit.configured",
                limits={m: f"{lim.rpm or '-'}rpm/{lim.tpm or '-'}tpm" for m, lim in limits.items()},
            )
        client = limiter_client(settings.redis_url)
        return cls(client, limits, max_wait_s=settings.rate_limit_max_wait_s)

    def counts_tokens(self, model: str) -> bool:
        limit = self.limits.get(model)
        return bool(limit and limit.tpm)

    def acquire(self, model: str, tokens: int) -> float:
        """Block until `model` may take one call of about `tokens` tokens; seconds waited.

        Sleeps until the computed slot (at most MAX_SLEEP_S at a time, then asks again). After
        `max_wait_s` the call is charged and let through anyway, so the job's own deadline and
        the provider's 429 decide, never an endless wait here.
        """
        limit = self.limits.get(model)
        if not limit:
            return 0.0
        start = self.clock()
        while True:
            waited = self.clock() - start
            force = waited >= self.max_wait_s
            decision = self._ask(model, limit, tokens, force=force)
            if decision is None or decision.admitted:
                if force and decision is not None and decision.wait_s > 0:
                    log.warning("ratelimit.gave_up", model=model, waited_s=round(waited, 3))
                return self.clock() - start
            pause = min(decision.wait_s, MAX_SLEEP_S, self.max_wait_s - waited)
            self.sleep(max(pause, MIN_SLEEP_S) + random.uniform(0, JITTER_S))

    def settle(self, model: str, *, estimated: int, used: int) -> None:
        """Give back tokens charged but not used, or charge those used beyond the estimate."""
        limit = self.limits.get(model)
        if limit is None or limit.tpm is None or used == estimated:
            return
        args = [limit.tpm, used - estimated, round(BURST_S * 1000)]
        self._run(self._settle, keys_of(model), args)

    def on_rate_limited(self, model: str) -> None:
        """A 429: every worker slows this model down (once per DECREASE_COOLDOWN_S)."""
        if model not in self.limits:
            return
        factor = self._adapt_factor(model, "down")
        if factor is not None:
            log.warning("ratelimit.slowed", model=model, factor=factor)

    def on_success(self, model: str) -> None:
        """A success: the model's rate climbs back by STEP, unless it is already at 100%."""
        if model in self.limits and self._factor.get(model, 1.0) < 1.0:
            self._adapt_factor(model, "up")

    def _adapt_factor(self, model: str, mode: str) -> float | None:
        args = [mode, DECREASE, FLOOR, STEP, DECREASE_COOLDOWN_S * 1000, FACTOR_TTL_S * 1000]
        answer = self._run(self._adapt, keys_of(model), args)
        if answer is None:
            return None
        self._factor[model] = float(answer)
        return self._factor[model]

    def _ask(self, model: str, limit: RateLimit, tokens: int, *, force: bool) -> Decision | None:
        args = [limit.rpm or 0, limit.tpm or 0, max(tokens, 0), round(BURST_S * 1000), int(force)]
        answer = self._run(self._acquire, keys_of(model), args)
        if answer is None:
            return None
        admitted, wait_ms, factor = answer
        self._factor[model] = float(factor)
        return Decision(admitted=bool(admitted), wait_s=float(wait_ms) / 1000, factor=float(factor))

    def _run(self, script, keys: list[str], args: list) -> object | None:
        """Run a script; None while Redis fails (then calls pass unlimited, logged once)."""
        if self.clock() < self._skip_redis_until:
            return None
        try:
            answer = script(keys=keys, args=args)
        except redis.RedisError as exc:
            self._skip_redis_until = self.clock() + REDIS_RETRY_S
            if not self._redis_down:
                self._redis_down = True
                log.warning(
                    "ratelimit.redis_unavailable",
                    error=f"{type(exc).__name__}: {exc}",
                    message="rate limits are not enforced until Redis answers",
                )
            return None
        if self._redis_down:
            self._redis_down = False
            log.info("ratelimit.redis_back")
        return answer
