"""Celery tasks: thin wrappers that hand a job id to the Runner."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import redis
import structlog
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from models.catalogue import get_catalogue
from models.db import get_engine, session_scope
from models.lifecycle import still_waiting
from models.logging import configure_logging
from models.popped import PoppedPolicy, note_killed
from models.queue import FINALIZE_TASK, TASK_BY_KIND, WEBHOOK_QUEUE, WEBHOOK_TASK, queue_for
from models.reserved import dead_owners, give_back
from models.settings import get_settings
from models.tokens import install_encodings
from models.webhooks import publish_on_commit
from worker import collector
from worker.batches import after_batch_job, finalize, sweep_batches
from worker.celery_app import celery_app
from worker.health import RedisHealth
from worker.liveness import Liveness
from worker.moderation import ModerationConfig
from worker.observe import message_headers, run_observed
from worker.providers.factory import build_provider
from worker.ratelimit_redis import RedisLimiter
from worker.retry import RetryPolicy
from worker.runner import SHUTTING_DOWN, Runner
from worker.streaming import Streaming
from worker.sweeper import Sweeper
from worker.webhooks import Deliverer

log = structlog.get_logger("genq.worker")


def dispatch(job_id: str, kind: str, countdown: float = 0, batch: bool = False) -> None:
    """Publish a job's message again (sweeper, rescheduled retries): only the job id travels; a
    batch job goes back to its kind's batch lane."""
    celery_app.send_task(
        TASK_BY_KIND[kind],
        args=[job_id],
        queue=queue_for(kind, batch=batch),
        countdown=countdown or None,
        headers=message_headers(),  # a rescheduled retry keeps the API's request id
    )


def dispatch_webhook(delivery_id: str, countdown: float = 0) -> None:
    """Publish a delivery's message (opened, retried later, or found overdue by the sweeper)."""
    celery_app.send_task(
        WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE, countdown=countdown or None
    )


def _dispatch_opened(delivery_ids: list[str]) -> None:
    for delivery_id in delivery_ids:
        dispatch_webhook(delivery_id)


#: deliveries opened by any commit of this process (a job's end) are published right after it
publish_on_commit(_dispatch_opened)


@lru_cache
def get_deliverer() -> Deliverer:
    """One delivery loop per worker process, started at its first delivery."""
    settings = get_settings()
    return Deliverer(get_engine(settings.database_url), settings, dispatch_webhook)


@lru_cache
def shared_redis() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5
    )


@lru_cache
def get_runner() -> Runner:
    """One Runner per worker process, shared by its threads."""
    settings = get_settings()
    install_encodings(settings.tiktoken_cache_dir)
    engine, provider = get_engine(settings.database_url), build_provider(settings)
    return Runner(
        engine=engine,
        provider=provider,
        streaming=Streaming.from_settings(
            settings, provider=provider, engine=engine, client=shared_redis()
        ),
        catalogue=get_catalogue(settings.catalogue_path),
        retry=RetryPolicy.from_settings(settings),
        lease_s=settings.lease_s,
        health=RedisHealth(
            shared_redis(), failures=settings.cooldown_failures, cooldown_s=settings.cooldown_s
        ),
        publish=dispatch,
        retry_inline_max_s=settings.retry_inline_max_s,
        fallback_after=settings.fallback_after,
        limiter=RedisLimiter.from_settings(settings),
        batch_job_ended=_batch_job_ended,
        moderation=ModerationConfig.from_settings(settings),
    )


def _batch_job_ended(batch_id: str, kind: str) -> None:
    after_batch_job(
        get_engine(get_settings().database_url),
        batch_id=batch_id,
        kind=kind,
        enqueue=queue_finalize,
    )


def queue_finalize(batch_id: str, kind: str) -> None:
    """Queue the batch's finalize on its kind's interactive queue (short, and not behind other
    batches' lines)."""
    celery_app.send_task(FINALIZE_TASK, args=[batch_id], queue=queue_for(kind))


@lru_cache
def get_sweeper() -> Sweeper:
    settings = get_settings()
    return Sweeper(
        get_engine(settings.database_url),
        shared_redis(),
        dispatch,
        publish_webhook=dispatch_webhook,
        interval_s=settings.sweep_interval_s,
        redispatch_after_s=settings.redispatch_after_s,
        batches=lambda: sweep_batches(get_engine(settings.database_url)),
        reserved=restore_reserved,
        popped=PoppedPolicy.from_settings(settings),
    )


def restore_reserved() -> int:
    """The unacked messages of worker processes silent for a lease go back to their queues,
    with kombu's own restore, those of jobs still waiting for them (models/reserved.py); a
    broker connection only when there are. A process that did not stop cleanly may also have
    taken a message it never recorded: noted first, for models/popped.py to look for."""
    client, settings = shared_redis(), get_settings()
    dead, ceiling = dead_owners(client, dead_after_s=settings.lease_s)
    if not dead:
        return 0
    note_killed(client, dead, ttl_s=settings.redispatch_after_s)

    def waiting(taken: dict[str, datetime]) -> set[str]:
        with session_scope(get_engine(settings.database_url)) as session:
            return still_waiting(session, taken=taken)

    with celery_app.pool.acquire(block=True, timeout=10) as connection:
        qos = connection.default_channel.qos
        return give_back(
            client,
            dead,
            ceiling,
            restore_by_tag=qos.restore_by_tag,
            drop_by_tag=lambda tag: qos._remove_from_indices(tag).execute(),
            still_waiting=waiting,
        )


@lru_cache
def get_liveness() -> Liveness:
    """This process's beat (worker/liveness.py): every third of a lease, like leases."""
    return Liveness(shared_redis(), interval_s=get_settings().lease_s / 3)


@setup_logging.connect
def _logging(**_kwargs) -> None:
    """Connecting here tells Celery to leave logging to genq's structlog set-up."""
    configure_logging(get_settings())


@worker_ready.connect
def _announce(**_kwargs) -> None:
    get_liveness().start()
    get_sweeper().start()
    runner = get_runner()
    if runner.provider.name == "offline":
        log.warning(
            "provider.offline",
            message="OFFLINE SIMULATOR in use: outputs are synthetic "
            "(set OPENAI_API_KEY or GENQ_PROVIDER=openai for real models)",
        )
    else:
        log.info("provider.ready", provider=runner.provider.name)
    collector.tune(get_settings().worker_gc_threshold)  # what is alive now lives as long as we do


@worker_process_init.connect
def _child_started(**_kwargs) -> None:
    """A prefork child (`--pool prefork`) tunes its own collector; the threads pool has none."""
    collector.tune(get_settings().worker_gc_threshold)


@worker_shutting_down.connect
def _shutting_down(**_kwargs) -> None:
    """Warm shutdown: in-flight calls finish; jobs waiting to retry go back to the queue."""
    SHUTTING_DOWN.set()
    get_sweeper().stop()
    if get_deliverer.cache_info().currsize:  # let attempts in flight end (else the sweeper
        get_deliverer().drain(get_settings().webhook_timeout_s + 1)  # retries them later)


@worker_shutdown.connect
def _stopped(**_kwargs) -> None:
    """The calls have finished and kombu gave back what this process held: the beat stops."""
    get_liveness().stop()


@celery_app.task(name="genq.generate_text", bind=True)
def generate_text(self, job_id: str) -> str:
    """Generate the text for one queued job."""
    return run_observed(self, job_id, get_runner())


@celery_app.task(name="genq.generate_image", bind=True)
def generate_image(self, job_id: str) -> str:
    """Generate the images for one queued job."""
    return run_observed(self, job_id, get_runner())


@celery_app.task(name=FINALIZE_TASK)
def finalize_batch(batch_id: str) -> str:
    """Build a finished batch's output and error files (a no-op unless it is done and unclaimed)."""
    return finalize(get_engine(get_settings().database_url), batch_id) or "nothing to do"


@celery_app.task(name=WEBHOOK_TASK)
def deliver_webhook(delivery_id: str) -> str:
    """Start one attempt of a webhook delivery; the POST runs off the pool's threads."""
    return get_deliverer().offer(delivery_id)
