"""The worker's collector tuning: a raised first threshold, start-up objects frozen, or nothing."""

from __future__ import annotations

import gc

import pytest
from structlog.testing import capture_logs

from worker import collector


@pytest.fixture
def restored_collector():
    """Each test leaves the interpreter's collector as it found it."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_raises_the_first_threshold_and_freezes_what_is_alive(restored_collector):
    # Given an object alive before tuning
    kept = {"alive": ["before", "tuning"]}
    # When the collector is tuned
    with capture_logs() as logs:
        frozen = collector.tune(50_000)
    # Then the thresholds are the raised one and the older generations', and it was frozen
    assert gc.get_threshold() == (50_000, *collector.OLDER)
    assert frozen > 1000 and gc.get_freeze_count() > 1000  # (frozen objects may still be freed)
    assert not any(kept is obj for obj in gc.get_objects())  # frozen: out of every collection
    assert logs == [
        {"event": "collector.tuned", "threshold": 50_000, "frozen": frozen, "log_level": "info"}
    ]


def test_zero_keeps_pythons_own_collector(restored_collector):
    # Given Python's own thresholds
    gc.set_threshold(700, 10, 10)
    # When the setting is 0
    with capture_logs() as logs:
        frozen = collector.tune(0)
    # Then nothing changed, nothing was frozen, and nothing was said
    assert (frozen, gc.get_threshold(), gc.get_freeze_count(), logs) == (0, (700, 10, 10), 0, [])


def test_cyclic_garbage_is_still_collected_after_tuning(restored_collector):
    # Given a tuned collector
    collector.tune(50_000)

    # When a cycle becomes garbage
    class Node:
        pass

    node = Node()
    node.me = node
    del node
    # Then a collection still frees it (the first generation collects it in time, not never)
    assert gc.collect() >= 1
