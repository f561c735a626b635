"""The savings benchmark runs end to end on a small slice (numbers are not asserted as timings)."""

from __future__ import annotations

import json
from decimal import Decimal

from bench.savings import SCENARIOS, load_workload, run_savings


def test_the_workload_is_the_fixed_200_prompt_mix():
    rows = load_workload()
    assert len(rows) == 200
    assert {r["category"] for r in rows} == {"classify", "tag", "subject", "describe", "article"}


def test_a_small_savings_run_reports_every_scenario(tmp_path, tiktoken_dir):
    summary, table = run_savings(tmp_path, limit=10)
    rows = {r["scenario"]: r for r in summary["scenarios"]}
    assert set(rows) == set(SCENARIOS)
    assert all(r["jobs"] == 10 and r["over_ceiling"] == 0 for r in rows.values())
    assert rows["always-premium"]["models"] == {"gpt-4.1": 10}
    assert Decimal(rows["balanced"]["cost_usd"]) < Decimal(rows["always-premium"]["cost_usd"])
    assert json.loads((tmp_path / summary["file"].rsplit("/", 1)[1]).read_text())["scenarios"]
    assert "| balanced | 10 |" in table
    # the cache runs: the same repeating workload costs less with the cache, by the repeats
    cache = {r["scenario"]: r for r in summary["cache"]["scenarios"]}
    repeated = summary["cache"]["repeated"]
    assert repeated >= 2 and cache["cache-off"]["jobs"] == cache["cache-on"]["jobs"]
    assert cache["cache-off"]["cache_hits"] == 0 and cache["cache-on"]["cache_hits"] == repeated
    assert cache["cache-on"]["provider_calls"] == cache["cache-off"]["provider_calls"] - repeated
    on, off = Decimal(cache["cache-on"]["cost_usd"]), Decimal(cache["cache-off"]["cost_usd"])
    assert on + Decimal(cache["cache-on"]["saved_usd"]) == off and on < off
    assert "| cache-on |" in table
