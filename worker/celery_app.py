"""The Celery app the workers run: Redis broker, JSON only, no result backend, late acks."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from models import redis_transport
from models.queue import ALL_QUEUES, TEXT_QUEUE
from models.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    """Configured for long, I/O-bound model calls whose results live in the database."""
    redis_transport.install()
    app = Celery("genq", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        # the batch lanes too: a plain `genq worker` runs both, interactive jobs first
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in ALL_QUEUES],
        task_default_queue=TEXT_QUEUE,
        # Flower's task list and per-task pages are built from these events; worker heartbeats
        # (Flower's worker list, `genq status workers`) are sent either way.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        # task events go out a quarter second apart in one message each (worker/task_events.py)
        worker_consumer="worker.task_events:Consumer",
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Redis redelivers an unacked message after this long; it must exceed any job's run time.
        # A redelivered message for a running job is ignored by the claim in worker/runner.py.
        # Interactive queues are polled before the batch lanes (models/redis_transport.py).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "queue_order_strategy": redis_transport.QUEUE_ORDER,
            # several queued messages per round trip, never beyond the prefetch limit
            "fetch_batch": settings.worker_fetch_batch,
        },
    )
    return app


celery_app = make_celery(get_settings())
