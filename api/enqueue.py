"""Publishing jobs to Celery by task name: the only bridge from the API to the workers."""

from __future__ import annotations

from collections.abc import Iterable

import redis
import structlog
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from api.request_id import current_request_id
from models import redis_transport
from models.bulk_publish import push_batch_jobs, push_job
from models.errors import NotReady
from models.queue import (
    FINALIZE_TASK,
    TEXT_QUEUE,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
)

#: a submit must answer quickly even when Redis is down: a few short tries, then 503
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
#: the same for the messages pushed on the Redis client: 2 more tries, 0.2 s then 0.4 s later,
#: each read bounded by 2 s as kombu's was
#: (redis-py's default of 10 tries of a 2 s connect would hold a submit for ~20 s)
PUSH_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.1), retries=2)
log = structlog.get_logger("genq.api")


class Publisher:
    """A producer-only Celery app; the message carries the job id and nothing else."""

    def __init__(self, redis_url: str):
        redis_transport.install()
        self.app = Celery("genq-api", broker=redis_url, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=2,
            broker_transport_options={"socket_timeout": 2, "socket_connect_timeout": 2},
        )
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2, retry=PUSH_RETRY
        )

    def publish(self, *, job_id: str, kind: str) -> None:
        """Send the job's message; raises NotReady when the broker cannot take it.

        The message is the one `send_task` would store (models/bulk_publish.py), pushed on the
        pooled Redis client (`PUSH_RETRY`)."""
        try:
            queue = push_job(self.redis, job_id=job_id, kind=kind, request_id=current_request_id())
        except redis.RedisError as exc:
            raise NotReady(
                f"the job queue is unavailable ({type(exc).__name__}); "
                "nothing was stored, retry the request"
            ) from exc
        log.info("job.enqueued", job_id=job_id, queue=queue)

    def publish_batch(self, jobs: Iterable[tuple[str, str]]) -> int:
        """Queue a batch's (job id, kind) pairs on the batch lanes, in order, in pipelines;
        raises NotReady when Redis cannot take them (the caller leaves them to the sweeper)."""
        try:
            count = push_batch_jobs(self.redis, jobs, request_id=current_request_id())
        except redis.RedisError as exc:
            raise NotReady(
                f"the job queue is unavailable ({type(exc).__name__}); retry the request"
            ) from exc
        log.info("batch.enqueued", jobs=count)
        return count

    def queue_finalize(self, batch_id: str) -> None:
        """Ask a worker to finalize the batch (a no-op until its jobs all ended); when the broker
        is down the workers' sweeper finalizes it anyway, so a failure is only logged."""
        self._send_or_log(FINALIZE_TASK, TEXT_QUEUE, "batch.finalize_not_queued", batch_id=batch_id)

    def publish_webhooks(self, delivery_ids: list[str]) -> None:
        """Send the messages of deliveries a request opened (a cancelled queued job's); a
        failure only delays them: the workers' sweeper publishes overdue deliveries."""
        for delivery_id in delivery_ids:
            if not self._send_or_log(
                WEBHOOK_TASK, WEBHOOK_QUEUE, "webhook.publish_deferred", webhook_id=delivery_id
            ):
                return

    def _send_or_log(self, task: str, queue: str, event: str, **ref: str) -> bool:
        """Send a task (its one argument: `ref`'s value) that the sweeper would also do later: a
        broker failure is logged with `ref`, not raised."""
        try:
            self.app.send_task(
                task,
                args=list(ref.values()),
                queue=queue,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:  # kombu raises many transport-specific types
            log.warning(event, error=type(exc).__name__, **ref)
            return False
        return True

    def close(self) -> None:
        self.app.close()
        self.redis.close()
