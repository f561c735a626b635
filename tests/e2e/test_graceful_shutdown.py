"""SIGTERM: the worker stops taking jobs, finishes the calls in flight, and loses nothing."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.test_faults import attempts_by_job, count_status, submit_many
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["postgres"], indirect=True),
]
SLOW = {"GENQ_OFFLINE_LATENCY_MS": "3000"}


def test_sigterm_finishes_in_flight_jobs_and_leaves_the_rest_queued(stack, settings):
    # Given one worker with 2 threads busy on 3-second calls, and more jobs waiting
    stack.worker("w1", "--concurrency", "2", env=SLOW)
    ids = submit_many(settings, 6)
    wait_until(
        lambda: count_status(settings, "running") == 2, timeout_s=60, what="two jobs in flight"
    )
    # When it gets SIGTERM mid-call
    stack.procs["w1"].send_signal(signal.SIGTERM)
    assert stack.procs["w1"].wait(timeout=60) == 0
    # Then the calls in flight finished, and nothing else was started or lost
    assert count_status(settings, "succeeded") == 2
    assert count_status(settings, "queued") == 4 and count_status(settings, "running") == 0
    # And a new worker runs the rest
    stack.worker("w2", "--concurrency", "4", env={"GENQ_OFFLINE_LATENCY_MS": "10"})
    wait_until(
        lambda: count_status(settings, "succeeded") == 6,
        timeout_s=120,
        what="the queued jobs to run on the new worker",
    )
    assert {
        a.worker.split("@")[0] for rows in attempts_by_job(settings).values() for a in rows
    } == {"w1", "w2"}
    assert len(ids) == 6
