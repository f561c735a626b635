"""`genq bench-chaos` runs end to end on a small job count (counts asserted, never timings)."""

from __future__ import annotations

import pytest

from bench.chaos import run_chaos

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("http", "concurrency"),
    [(False, 8), (True, 64)],
    ids=["offline-provider", "sdk-over-http-sharded-pools"],
)
def test_a_small_chaos_run_keeps_every_invariant(tiktoken_dir, http, concurrency):
    # The HTTP run goes through the openai SDK's sharded pools (more threads than one shard)
    summary = run_chaos(
        jobs=40, workers=2, tiktoken_dir=tiktoken_dir, concurrency=concurrency, http=http
    )
    assert summary["succeeded"] == summary["jobs"] == 40
    assert summary["killed_after_finished"] < 40
    assert all(value == 0 for name, value in summary.items() if "must be 0" in name)
    assert summary["attempts"] >= 40
    assert summary["http_429"] > 0  # the faults really happened
