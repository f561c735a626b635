"""The savings benchmark's cache runs: one workload with 30% repeated prompts, without and with
the response cache, in the same run.

Each job goes through the API's own submit path (`api.submit.submit_job`: plan, budget, the
cache step, store) and then through the worker's Runner and the offline simulator, one at a
time: the publisher below runs a job as it is published, so a hit (never published) costs
nothing and a miss costs what its call costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

import redis.asyncio as aioredis

from api.services import Services
from api.submit import submit_job
from models.catalogue import Catalogue
from models.db import get_engine, session_scope
from models.jobs import Job
from models.keys import create_key
from models.migrate import SchemaCheck
from models.money import money
from models.schemas import JobCreate
from models.settings import Settings
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import Simulator
from worker.retry import RetryPolicy
from worker.runner import Runner

#: after 3 of every 7 distinct requests comes a repeat: 3 of every 10 jobs repeat one
REPEATS_PER_7_FRESH = (2, 4, 6)
#: the TTL of the cached run: longer than the whole run
CACHE_TTL_S = 3600


@dataclass
class CacheOutcome:
    scenario: str
    jobs: int = 0
    repeats: int = 0
    cost: Decimal = Decimal(0)
    hits: int = 0
    saved: Decimal = Decimal(0)
    calls: int = 0


def with_repeats(rows: list[dict]) -> tuple[list[dict], int]:
    """The distinct requests of `rows` (the workload repeats some), 3 of every 7 followed by a
    repeat of an earlier one (deterministic): 30% of the jobs repeat a request. Returns the
    jobs and how many repeat."""
    distinct = list(
        {json.dumps([r["messages"], r["params"]], sort_keys=True): r for r in rows}.values()
    )
    jobs: list[dict] = []
    repeats = 0
    for index, row in enumerate(distinct):
        jobs.append(row)
        if index % 7 in REPEATS_PER_7_FRESH:
            jobs.append(distinct[(index * 5) % (index + 1)])
            repeats += 1
    return jobs, repeats


class _RunNow:
    """A publisher that runs each published job at once (the bench has no broker)."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def publish(self, *, job_id: str, kind: str) -> None:
        self.runner.run(job_id, worker="savings-cache")

    def publish_webhooks(self, delivery_ids: list[str]) -> None:
        """The bench's jobs name no webhook: a hit opens no delivery."""
        assert not delivery_ids


def _body(row: dict, ttl_s: int) -> JobCreate:
    return JobCreate.model_validate(
        {
            "kind": "text",
            "messages": row["messages"],
            "params": row["params"],
            "policy": {
                "tier": "balanced",
                "max_cost_usd": row["max_cost_usd"],
                "cache_ttl_s": ttl_s,
            },
            "metadata": {"category": row["category"]},
        }
    )


def run_cache_scenario(
    name: str, ttl_s: int, jobs: list[dict], database_url: str, catalogue: Catalogue
) -> CacheOutcome:
    """Submit and run every job of `jobs` with the cache's TTL `ttl_s` (0: off)."""
    engine = get_engine(database_url)
    runner = Runner(
        engine=engine,
        provider=OfflineProvider(Simulator(), catalogue),
        catalogue=catalogue,
        retry=RetryPolicy(max_attempts=1),
    )
    settings = Settings(_env_file=None, database_url=database_url, cache_ttl_s=0)
    services = Services(
        settings=settings,
        engine=engine,
        catalogue=catalogue,
        publisher=_RunNow(runner),  # type: ignore[arg-type]  (the publisher's one method)
        schema=SchemaCheck(engine),
        events=aioredis.Redis.from_url(settings.redis_url),  # never connected: no stream jobs
    )
    with session_scope(engine) as session:
        key, _ = create_key(session, name=f"savings-{name}")
    outcome = CacheOutcome(scenario=name)
    for row in jobs:
        job = submit_job(services, key=key, body=_body(row, ttl_s), idempotency_key=None)
        with session_scope(engine) as session:
            done = session.get(Job, job.id)
        outcome.jobs += 1
        outcome.cost += done.cost_usd
        outcome.calls += done.attempts
        if done.cache_saved_usd is not None:
            outcome.hits += 1
            outcome.saved += done.cache_saved_usd
    return outcome


def run_cache_scenarios(rows: list[dict], database_url: str, catalogue: Catalogue) -> dict:
    """The same repeating workload without and with the cache; the JSON summary part."""
    jobs, repeats = with_repeats(rows)
    off = run_cache_scenario("cache-off", 0, jobs, database_url, catalogue)
    on = run_cache_scenario("cache-on", CACHE_TTL_S, jobs, database_url, catalogue)
    return {
        "jobs": len(jobs),
        "repeated": repeats,
        "scenarios": [
            {
                "scenario": o.scenario,
                "jobs": o.jobs,
                "provider_calls": o.calls,
                "cache_hits": o.hits,
                "cost_usd": money(o.cost),
                "saved_usd": money(o.saved),
            }
            for o in (off, on)
        ],
        "ratio_on_to_off": str(round(on.cost / off.cost, 4)) if off.cost else None,
    }


def cache_markdown(cache: dict) -> str:
    lines = [
        f"\nresponse cache: {cache['jobs']} balanced-tier jobs, {cache['repeated']} of them "
        "repeating an earlier prompt",
        "",
        "| scenario | jobs | provider calls | cache hits | total cost (USD) | saved (USD) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in cache["scenarios"]:
        lines.append(
            f"| {row['scenario']} | {row['jobs']} | {row['provider_calls']} | "
            f"{row['cache_hits']} | {row['cost_usd']} | {row['saved_usd']} |"
        )
    lines.append(f"\ncache-on / cache-off cost = {cache['ratio_on_to_off']}")
    return "\n".join(lines)
