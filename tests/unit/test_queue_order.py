"""The order a worker polls its queues in: interactive queues first, whatever `-Q` said."""

from __future__ import annotations

import pytest
from kombu.utils.scheduling import cycle_by_name

from models.queue import queue_for
from models.redis_transport import QUEUE_ORDER, InteractiveFirst


@pytest.mark.parametrize(
    ("given", "polled"),
    [
        (["text.batch", "text"], ["text", "text.batch"]),
        (
            ["images.batch", "text.batch", "images", "text"],
            ["images", "text", "images.batch", "text.batch"],
        ),
        (
            ["text", "images", "text.batch", "images.batch"],
            ["text", "images", "text.batch", "images.batch"],
        ),
        (["text.batch"], ["text.batch"]),
    ],
)
def test_interactive_queues_are_polled_before_batch_lanes(given, polled):
    cycle = cycle_by_name(QUEUE_ORDER)()
    cycle.update(given)
    cycle.rotate(polled[0])  # a delivery from a queue never moves it (kombu's round robin would)
    assert cycle.consume(len(given)) == polled


def test_the_transport_option_names_the_cycle():
    assert cycle_by_name(QUEUE_ORDER) is InteractiveFirst


def test_batch_jobs_go_to_their_kinds_lane():
    assert queue_for("text") == "text" and queue_for("image") == "images"
    assert queue_for("text", batch=True) == "text.batch"
    assert queue_for("image", batch=True) == "images.batch"
