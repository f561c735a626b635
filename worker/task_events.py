"""Celery's consumer with task events sent in batches a short while apart, not one per wake-up.

Celery already buffers a worker's task events (received, started, succeeded…) and sends them as
one `task.multi` message; but it schedules that flush for the event loop's next pass, so at
genq's rates most messages carried one or two events. Here the first event buffered after a
flush schedules the next flush `FLUSH_AFTER_S` later, and every event until then joins it. Celery
still flushes at once when 24 events are buffered, and shutdown flushes what is left, so Flower
(whose task list and pages are built from these events) sees every event, at most
`FLUSH_AFTER_S` later; across a lost broker connection the waiting events go out with the next
connection, as Celery's unsent events do. Selected by `worker_consumer` in worker/celery_app.py.
"""

from __future__ import annotations

from time import monotonic

from celery.worker.consumer import Consumer as CeleryConsumer

#: how long an event may wait for others to share its message (docs/performance.md)
FLUSH_AFTER_S = 0.25
#: a flush this late is presumed lost (its timer went with a reconnect): the next event re-arms
LOST_AFTER_S = 2.0


class Consumer(CeleryConsumer):
    #: until when the scheduled flush may still come; 0 when none is scheduled. Set by whichever
    #: thread buffers an event, cleared by the event loop just before it flushes
    _flush_due = 0.0

    def on_send_event_buffered(self) -> None:
        """Called by any thread that buffered an event (Celery's pool threads included)."""
        now = monotonic()
        if self.hub and now > self._flush_due:
            self._flush_due = now + FLUSH_AFTER_S + LOST_AFTER_S
            # call_soon is the hub's thread-safe entry; the timer is then set on its own thread
            self.hub.call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        self.hub.call_later(FLUSH_AFTER_S, self._flush_buffered)

    def _flush_buffered(self) -> None:
        # cleared first: an event buffered during the flush's socket write schedules the next
        self._flush_due = 0.0
        self._flush_events()

    def on_close(self) -> None:
        """The broker connection was lost. Celery carries only the dispatcher's outbound buffer
        over to the dispatcher of the next connection, so the task events still waiting for
        their flush join it, and the events sent until then skip the wait (published at once,
        or buffered there when that fails)."""
        dispatcher = self.event_dispatcher
        if dispatcher is not None:
            dispatcher.buffer_group = frozenset()
            with dispatcher.mutex:
                for group, events in dispatcher._group_buffer.items():
                    if events:
                        dispatcher._outbound_buffer.append((list(events), f"{group}.multi"))
                        events[:] = []
        self._flush_due = 0.0
        super().on_close()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
