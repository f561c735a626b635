"""Task events wait a moment to share one `task.multi` message, and shutdown sends the rest."""

from __future__ import annotations

import threading

import pytest
from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer

from worker import task_events
from worker.task_events import FLUSH_AFTER_S, LOST_AFTER_S, Consumer


class Hub:
    """The two calls the consumer makes on kombu's event loop, run by hand."""

    def __init__(self):
        self.soon, self.later = [], []

    def call_soon(self, callback):
        self.soon.append(callback)

    def call_later(self, delay, callback):
        self.later.append((delay, callback))

    def run_soon(self):
        ready, self.soon = self.soon, []
        for callback in ready:
            callback()


@pytest.fixture
def worker(monkeypatch):
    """A consumer on a fake hub with a real dispatcher; the messages it would publish."""
    monkeypatch.setattr(CeleryConsumer, "shutdown", lambda self: None)  # the rest of Celery's
    app = Celery(broker="memory://", set_as_current=False)
    consumer = Consumer.__new__(Consumer)
    consumer.hub = Hub()
    sent = []
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(
            connection,
            hostname="w@h",
            buffer_group=["task"],
            on_send_buffered=consumer.on_send_event_buffered,
        )
        monkeypatch.setattr(
            dispatcher,
            "_publish",
            lambda event, producer, routing_key, **_: sent.append(
                (routing_key, [e["type"] for e in event])
            ),
        )
        consumer.event_dispatcher = dispatcher
        yield consumer, dispatcher, sent


def send_from_threads(dispatcher, types):
    threads = [
        threading.Thread(target=dispatcher.send, args=(t,), kwargs={"uuid": str(i)})
        for i, t in enumerate(types)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_events_buffered_until_the_timer_go_out_as_one_message(worker):
    consumer, dispatcher, sent = worker
    # When pool threads send five events before the flush's timer fires
    send_from_threads(dispatcher, ["task-received", "task-started", "task-succeeded"])
    assert len(consumer.hub.soon) == 1  # one wake-up of the event loop, not one per event
    consumer.hub.run_soon()
    [(delay, flush)] = consumer.hub.later
    assert delay == FLUSH_AFTER_S and sent == []
    send_from_threads(dispatcher, ["task-received", "task-started"])
    assert consumer.hub.soon == []

    # Then the timer sends them all in one message, in order
    flush()
    assert sent == [
        (
            "task.multi",
            ["task-received", "task-started", "task-succeeded", "task-received", "task-started"],
        )
    ]
    # And the next event schedules the next flush
    dispatcher.send("task-succeeded", uuid="9")
    assert len(consumer.hub.soon) == 1


def test_shutdown_sends_what_is_still_buffered(worker):
    consumer, dispatcher, sent = worker
    dispatcher.send("task-succeeded", uuid="1")
    consumer.hub.run_soon()  # the timer is set but has not fired
    consumer.shutdown()
    assert sent == [("task.multi", ["task-succeeded"])]


def test_a_flush_whose_timer_was_lost_is_scheduled_again(worker, monkeypatch):
    consumer, dispatcher, _sent = worker
    clock = [1000.0]
    monkeypatch.setattr(task_events, "monotonic", lambda: clock[0])
    dispatcher.send("task-received", uuid="1")
    consumer.hub.soon.clear()  # the loop restarted: that wake-up and its timer are gone
    dispatcher.send("task-started", uuid="1")
    assert consumer.hub.soon == []  # still presumed on its way
    clock[0] += FLUSH_AFTER_S + LOST_AFTER_S + 0.01
    dispatcher.send("task-succeeded", uuid="1")
    assert len(consumer.hub.soon) == 1


def test_events_waiting_at_a_lost_connection_go_out_with_the_next(worker, monkeypatch):
    consumer, dispatcher, sent = worker
    monkeypatch.setattr(CeleryConsumer, "on_close", lambda self: None)  # the rest of Celery's
    dispatcher.send("task-received", uuid="1")
    dispatcher.send("task-started", uuid="1")
    consumer.hub.run_soon()  # their flush is due in FLUSH_AFTER_S
    consumer.on_close()  # the broker connection failed first
    # Celery's Events step carries the outbound buffer, and only it, to the next dispatcher
    [(events, routing_key)] = dispatcher._outbound_buffer
    assert routing_key == "task.multi"
    assert [e["type"] for e in events] == ["task-received", "task-started"]
    # until the next dispatcher exists, an event is published at once, without the wait
    published = []
    monkeypatch.setattr(dispatcher, "_publish", lambda event, *_a, **kw: published.append(event))
    dispatcher.send("task-succeeded", uuid="1")
    assert [event["type"] for event in published] == ["task-succeeded"]
    assert consumer.hub.soon == [] and sent == []
