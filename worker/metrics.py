"""Prometheus metrics of a worker process, served on its own port (`genq worker --metrics-port`).

One worker process = one endpoint: genq workers run Celery's threads pool, so every task of a
process runs in the process that serves these counters and no multiprocess aggregation is needed.
Prometheus sums across processes (`sum by (model) (rate(genq_jobs_total[5m]))`).
The Runner records through `record_attempt`; the rate limiter through `observe_rate_limit_wait`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from models.attempts import RETRYABLE, Attempt
from models.broker import QUEUES, queue_depths, redis_client
from models.db import get_engine, session_scope
from models.settings import Settings
from models.stats import oldest_queued_age_s

#: model calls take from well under a second (small text) to minutes (large images)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
#: waits for a rate-limit slot: from a few milliseconds to a full minute window
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

JOBS = Counter(
    "genq_jobs", "Jobs finished by a worker, by final status", ["kind", "model", "status"]
)
ATTEMPT_SECONDS = Histogram(
    "genq_attempt_duration_seconds",
    "Duration of one provider call, by outcome (succeeded, retryable_error, failed)",
    ["kind", "model", "outcome"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "genq_tokens", "Tokens billed, by type (prompt, cached, completion)", ["model", "type"]
)
IMAGES = Counter("genq_images", "Images generated", ["model"])
COST = Counter("genq_cost_usd", "Dollars spent on provider calls (catalogue prices)", ["model"])
RETRIES = Counter(
    "genq_retries", "Failed attempts that will be retried, by reason", ["model", "reason"]
)
RATE_LIMIT_WAIT = Histogram(
    "genq_rate_limit_wait_seconds",
    "Time a call waited for genq's own rate limiter before it was sent",
    ["model"],
    buckets=WAIT_BUCKETS,
)
DELIVERIES = Counter(
    "genq_task_deliveries",
    "Task messages handled, by what the runner did (succeeded, failed, skipped, lost)",
    ["task", "outcome"],
)
MODERATION = Counter(
    "genq_moderation_checks",
    "Moderation checks, by stage (input, output) and result (passed, flagged, blocked, "
    "error: allowed through an outage, unavailable: the job failed on the outage)",
    ["stage", "result"],
)
WEBHOOK_DELIVERIES = Counter(
    "genq_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, failed, gone, exhausted)",
    ["outcome"],
)
IN_PROGRESS = Gauge("genq_worker_jobs_in_progress", "Jobs this worker process is running now")


def record_attempt(attempt: Attempt, *, kind: str) -> None:
    """Count one stored attempt: its latency, usage, cost, and a retry when one follows."""
    model = attempt.model
    ATTEMPT_SECONDS.labels(kind, model, attempt.outcome).observe(attempt.latency_ms / 1000)
    for kind_of_token in ("prompt", "cached", "completion"):
        count = getattr(attempt, f"{kind_of_token}_tokens")
        if count:
            TOKENS.labels(model, kind_of_token).inc(count)
    if attempt.images:
        IMAGES.labels(model).inc(attempt.images)
    if attempt.cost_usd:
        COST.labels(model).inc(float(attempt.cost_usd))
    if attempt.outcome == RETRYABLE:
        RETRIES.labels(model, attempt.error_type or "unknown").inc()


def record_webhook(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def record_job_end(*, kind: str, model: str, status: str) -> None:
    """Count a job that a worker finished (succeeded, failed, cancelled while running)."""
    JOBS.labels(kind, model, status).inc()


def record_moderation(stage: str, result: str) -> None:
    MODERATION.labels(stage=stage, result=result).inc()


def observe_rate_limit_wait(model: str, seconds: float) -> None:
    """Record how long a call waited for a rate-limit slot (called by the rate limiter)."""
    RATE_LIMIT_WAIT.labels(model).observe(max(0.0, seconds))


def record_delivery(task: str, outcome: str) -> None:
    """Count one handled message; `skipped` means a duplicate that found its job taken."""
    DELIVERIES.labels(task, outcome).inc()


class QueueCollector(Collector):
    """Queue depth per queue and the oldest queued job's age, read at scrape time."""

    def __init__(
        self, redis_url: str, oldest_queued_age_s: Callable[[], float | None] | None = None
    ):
        self.redis = redis_client(redis_url)
        self.oldest_queued_age_s = oldest_queued_age_s

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without touching Redis (lets the registry check names)."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, up, age = self._families()
        try:
            for queue, count in queue_depths(self.redis, QUEUES).items():
                depth.add_metric([queue], count)
            up.add_metric([], 1)
        except redis.RedisError:
            up.add_metric([], 0)
        value = self._oldest()
        if value is not None:
            age.add_metric([], value)
        yield from (depth, up, age)

    def _oldest(self) -> float | None:
        """The age to report: 0 when nothing waits, None (no sample) when it cannot be read."""
        if self.oldest_queued_age_s is None:
            return None
        try:
            return self.oldest_queued_age_s() or 0.0
        except Exception:  # a scrape must not fail because the database hiccupped
            return None

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "genq_queue_depth", "Messages waiting in a Celery queue", labels=["queue"]
            ),
            GaugeMetricFamily("genq_broker_up", "1 when Redis answered the queue-depth read"),
            GaugeMetricFamily(
                "genq_oldest_queued_job_age_seconds",
                "Seconds the oldest queued job (all keys) has waited; 0 when none waits",
            ),
        )


def serve(
    *,
    port: int,
    host: str,
    redis_url: str,
    oldest_queued_age_s: Callable[[], float | None] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> int:
    """Serve this process's metrics on `host:port` (a background thread); returns the port."""
    registry.register(QueueCollector(redis_url, oldest_queued_age_s))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_port


def serve_from_settings(settings: Settings, port: int) -> int:
    """Serve metrics on `port` and GENQ_WORKER_METRICS_HOST, with the queue and age gauges."""
    engine = get_engine(settings.database_url)

    def oldest() -> float | None:
        with session_scope(engine) as session:
            return oldest_queued_age_s(session, key_id=None)

    return serve(
        port=port,
        host=settings.worker_metrics_host,
        redis_url=settings.redis_url,
        oldest_queued_age_s=oldest,
    )
