"""`genq bench-chaos` runs end to end on a small job count (counts asserted, never timings)."""

from __future__ import annotations

import pytest

from bench.chaos import run_chaos

pytestmark = pytest.mark.e2e


def test_a_small_chaos_run_keeps_every_invariant(tiktoken_dir):
    summary = run_chaos(jobs=40, workers=2, tiktoken_dir=tiktoken_dir)
    assert summary["succeeded"] == summary["jobs"] == 40
    assert summary["killed_after_finished"] < 40
    assert all(value == 0 for name, value in summary.items() if "must be 0" in name)
    assert summary["attempts"] >= 40
