"""The worker's collector tuning: a raised first threshold, start-up objects frozen, or nothing."""

from __future__ import annotations

import gc
import weakref

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
    frozen_before = gc.get_freeze_count()
    # When the setting is 0
    with capture_logs() as logs:
        frozen = collector.tune(0)
    # Then nothing changed, nothing more was frozen, and nothing was said
    assert (frozen, gc.get_threshold(), logs) == (0, (700, 10, 10), [])
    assert gc.get_freeze_count() == frozen_before


def test_cyclic_garbage_is_still_collected_on_its_own_after_tuning(restored_collector):
    # Given a tuned collector (a small threshold, so the test allocates little)
    collector.tune(5_000)

    # When a cycle becomes garbage and then more than the threshold is allocated and kept
    class Node:
        pass

    node = Node()
    node.me = node
    gone = weakref.ref(node)
    del node
    assert gone() is not None  # reference counting alone cannot free a cycle
    kept = [[] for _ in range(6_000)]
    # Then the collector ran by itself and freed the cycle
    assert gone() is None and len(kept) == 6_000
