"""worker/health.py: the circuit shared through Redis, whose successes send nothing when clean.

Each RedisHealth here stands for one worker process (its own listener and memory of what it
cleared); they share one Redis, as worker processes do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from worker.health import RedisHealth


def eventually(check: Callable[[], bool], within_s: float = 3.0) -> None:
    until = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < until, "not within the time"
        time.sleep(0.005)


@pytest.fixture
def client(clean_redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_redis)
    yield client
    client.close()


@pytest.fixture
def processes(client) -> Iterator[Callable[[], RedisHealth]]:
    made: list[RedisHealth] = []

    def process() -> RedisHealth:
        health = RedisHealth(client, failures=2, cooldown_s=30, ping_s=0.1)
        made.append(health)
        return health

    yield process
    for health in made:
        health.close()


def clean_and_listening(health: RedisHealth, model: str) -> None:
    """A success, once this process's listener hears every failure: the model is clean here."""
    health.record_success(model)
    eventually(lambda: health._listening is not None)
    health.record_success(model)


def test_successes_on_a_closed_circuit_send_nothing(client, processes):
    health = processes()
    clean_and_listening(health, "m")
    sent: list[tuple] = []
    delete = client.delete
    client.delete = lambda *keys: sent.append(keys) or delete(*keys)  # type: ignore[method-assign]
    for _ in range(50):
        health.record_success("m")
    assert sent == []


def test_a_clean_model_is_available_without_a_round_trip_until_it_opens(client, processes):
    one, two = processes(), processes()
    clean_and_listening(one, "m")
    sent: list[tuple] = []
    pipeline = client.pipeline
    client.pipeline = lambda *a, **k: sent.append(a) or pipeline(*a, **k)  # type: ignore[method-assign]
    assert all(one.available("m") for _ in range(50))
    assert sent == []
    client.pipeline = pipeline  # type: ignore[method-assign]
    # another process's failures open the circuit: announced, so one asks Redis again
    two.record_failure("m")
    two.record_failure("m")
    eventually(lambda: "m" not in one._clean)
    assert not one.available("m")


def test_a_success_clears_a_failure_another_process_recorded(client, processes):
    one, two = processes(), processes()
    clean_and_listening(one, "m")  # one knows "m" is clean…
    two.record_failure("m")  # …until two's failure is announced
    eventually(lambda: "m" not in one._clean)
    one.record_success("m")
    assert client.exists("genq:health:m:failures") == 0
    two.record_failure("m")  # one failure since the success: below the threshold of 2
    assert one.available("m") and two.available("m")


def test_a_success_clears_an_open_circuit_another_process_opened(client, processes):
    one, two = processes(), processes()
    clean_and_listening(one, "m")
    two.record_failure("m")
    two.record_failure("m")
    assert not two.available("m")
    eventually(lambda: "m" not in one._clean)
    one.record_success("m")  # a job without fallbacks called it anyway, and it answered
    assert two.available("m") and one.available("m")


def test_a_lost_subscription_makes_the_next_success_clear(client, processes):
    one, two = processes(), processes()
    clean_and_listening(one, "m")
    client.client_kill_filter(_type="pubsub")  # one's listener is cut off
    eventually(lambda: one._listening is None)
    two.record_failure("m")  # announced while nobody listens: one never hears it
    one.record_success("m")
    assert client.exists("genq:health:m:failures") == 0
    # and once subscribed again, clean successes send nothing again
    eventually(lambda: one._listening is not None)
    clean_and_listening(one, "m")
    assert client.exists("genq:health:m:failures") == 0


def test_a_failed_clear_is_tried_again(client, processes, monkeypatch):
    health = processes()
    clean_and_listening(health, "m")
    health.record_failure("m")

    def down(*_keys):
        raise redis.ConnectionError("down")

    monkeypatch.setattr(client, "delete", down)
    health.record_success("m")  # Redis down: nothing cleared, never blocks the job
    monkeypatch.undo()
    health.record_success("m")
    assert client.exists("genq:health:m:failures") == 0


def test_a_success_between_a_failure_and_the_opening_it_causes_does_not_hide_it(
    client, processes, monkeypatch
):
    one, two = processes(), processes()
    clean_and_listening(one, "m")
    two.record_failure("m")
    pipelines = []
    pipeline = client.pipeline

    def between(*args, **kwargs):
        pipelines.append(args)
        if len(pipelines) == 2:  # two's opening pipeline: one heard the failure and clears first
            eventually(lambda: "m" not in one._clean)
            one.record_success("m")
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", between)
    two.record_failure("m")  # the second failure: its count, then the opening
    monkeypatch.undo()
    assert not two.available("m")
    eventually(lambda: "m" not in one._clean)  # the opening is announced too
    one.record_success("m")  # so this success clears it, as the next success always did
    assert two.available("m")


def test_the_listener_survives_an_unexpected_error(processes, monkeypatch):
    health = processes()
    listen_once, raised = health._listen_once, []

    def fails_once(pid: int) -> None:
        if not raised:
            raised.append(pid)
            raise RuntimeError("pubsub connection not set")
        listen_once(pid)

    monkeypatch.setattr(health, "_listen_once", fails_once)
    clean_and_listening(health, "m")  # it listens again after the error
    assert raised
