"""Savings benchmark: one fixed mixed workload priced under each tier and under always-premium.

The 200 prompts in bench/data/savings_workload.jsonl run through genq's own cost policy,
Runner and offline simulator (real token counts, catalogue prices) on a private SQLite
database; each job carries its `max_cost_usd` ceiling. The baseline pins every job to the
model the premium tier picks (gpt-4.1), so the ratio measures only what routing saves. The
response cache's runs (bench/savings_cache.py) add a workload with 30% repeated prompts, priced
without and with the cache.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path

from bench.savings_cache import cache_markdown, run_cache_scenarios
from models.catalogue import Catalogue, load_catalogue
from models.db import get_engine, session_scope
from models.errors import InvalidRequest
from models.jobs import Job, job_from_plan
from models.keys import create_key
from models.migrate import upgrade
from models.planning import Defaults, plan_job
from models.schemas import JobCreate
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import Simulator
from worker.retry import RetryPolicy
from worker.runner import Runner

#: scenario name -> (tier, pinned model or None)
SCENARIOS = {
    "economy": ("economy", None),
    "balanced": ("balanced", None),
    "premium": ("premium", None),
    "always-premium": ("premium", "gpt-4.1"),
}
BASELINE = "always-premium"
#: issue #4's target: the balanced tier spends at most half of always-premium
TARGET_BALANCED_RATIO = Decimal("0.5")


@dataclass
class Outcome:
    scenario: str
    cost: Decimal = Decimal(0)
    jobs: int = 0
    refused: int = 0
    over_ceiling: int = 0
    models: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)


def load_workload() -> list[dict]:
    text = resources.files("bench.data").joinpath("savings_workload.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _request(row: dict, tier: str, model: str | None) -> JobCreate:
    return JobCreate.model_validate(
        {
            "kind": "text",
            "messages": row["messages"],
            "params": row["params"],
            "model": model,
            "policy": {"tier": tier, "max_cost_usd": row["max_cost_usd"]},
            "metadata": {"category": row["category"]},
        }
    )


def run_scenario(
    name: str, workload: list[dict], database_url: str, catalogue: Catalogue
) -> Outcome:
    """Plan, store and run every job of the workload under one scenario."""
    tier, model = SCENARIOS[name]
    engine = get_engine(database_url)
    runner = Runner(
        engine=engine,
        provider=OfflineProvider(Simulator(), catalogue),
        catalogue=catalogue,
        retry=RetryPolicy(max_attempts=1),
    )
    outcome = Outcome(scenario=name)
    with session_scope(engine) as session:
        key, _ = create_key(session, name=f"savings-{name}")
    for row in workload:
        try:
            plan = plan_job(_request(row, tier, model), catalogue, Defaults(tier=tier))
        except InvalidRequest:
            outcome.refused += 1
            continue
        with session_scope(engine) as session:
            job = job_from_plan(key_id=key.id, body=_request(row, tier, model), plan=plan)
            session.add(job)
        runner.run(job.id, worker="savings")
        with session_scope(engine) as session:
            done = session.get(Job, job.id)
        outcome.jobs += 1
        outcome.cost += done.cost_usd
        outcome.models[done.model] += 1
        outcome.by_category[row["category"]] += done.cost_usd
        outcome.over_ceiling += done.cost_usd > Decimal(row["max_cost_usd"])
    return outcome


def run_savings(
    results_dir: Path = Path("bench/results"), *, limit: int | None = None
) -> tuple[dict, str]:
    """All scenarios on a fresh database; returns the JSON summary and a Markdown table.

    `limit` takes every n-th row so a small run still mixes every category (smoke tests).
    """
    workload, catalogue = load_workload(), load_catalogue()
    if limit:
        workload = workload[:: max(len(workload) // limit, 1)][:limit]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/savings.db"
        upgrade(url)
        outcomes = [run_scenario(name, workload, url, catalogue) for name in SCENARIOS]
        cache = run_cache_scenarios(workload, url, catalogue)
        get_engine(url).dispose()
    summary = _summary(outcomes, time.perf_counter() - started)
    summary["cache"] = cache
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"savings-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2))
    summary["file"] = str(path)
    return summary, markdown(summary)


def _summary(outcomes: list[Outcome], seconds: float) -> dict:
    baseline = next(o.cost for o in outcomes if o.scenario == BASELINE)
    rows = [
        {
            "scenario": o.scenario,
            "jobs": o.jobs,
            "refused": o.refused,
            "cost_usd": str(o.cost),
            "ratio_to_always_premium": str(round(o.cost / baseline, 4)),
            "over_ceiling": o.over_ceiling,
            "models": dict(o.models.most_common()),
            "cost_by_category": {k: str(v) for k, v in sorted(o.by_category.items())},
        }
        for o in outcomes
    ]
    balanced = next(o.cost for o in outcomes if o.scenario == "balanced") / baseline
    return {
        "workload": "bench/data/savings_workload.jsonl",
        "seconds": round(seconds, 1),
        "scenarios": rows,
        "balanced_ratio": str(round(balanced, 4)),
        "target_met": balanced <= TARGET_BALANCED_RATIO,
        "no_job_over_ceiling": all(o.over_ceiling == 0 for o in outcomes),
    }


def markdown(summary: dict) -> str:
    lines = [
        "| scenario | jobs | total cost (USD) | vs always-premium | over ceiling | models |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in summary["scenarios"]:
        models = ", ".join(f"{m}: {n}" for m, n in row["models"].items())
        lines.append(
            f"| {row['scenario']} | {row['jobs']} | {row['cost_usd']} | "
            f"{row['ratio_to_always_premium']} | {row['over_ceiling']} | {models} |"
        )
    verdict = "met" if summary["target_met"] else "MISSED"
    lines.append(
        f"\nbalanced / always-premium = {summary['balanced_ratio']} "
        f"(target ≤ {TARGET_BALANCED_RATIO}: {verdict}); "
        f"jobs over their ceiling: {'none' if summary['no_job_over_ceiling'] else 'SOME'}"
    )
    return "\n".join(lines) + (cache_markdown(summary["cache"]) if "cache" in summary else "")
