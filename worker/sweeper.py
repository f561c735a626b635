"""The sweeper: puts back on the queue every accepted job that would otherwise be stuck.

It runs as a thread in every worker process; a Redis lock makes one of them sweep at a time. Each
sweep (0) gives back to their queues the messages a dead worker took and had not acked
(models/reserved.py) and, after one died, publishes again the job whose message it had popped but
not yet recorded (models/popped.py), (1) returns running jobs whose lease expired (their worker
died) to the queue, (2) ends the response cache's followers still waiting on a finished leader, and
fails those whose own deadline passed meanwhile (`timeout`; worker/flights.py), (3) publishes
queued jobs that were never published (the broker was down at submit) or whose message is presumed
lost (published long ago, still queued; a batch job only once its kind's batch lane is empty: a
long lane is not a lost message), and (4) expires, stops and finalizes batches (worker/batches.py).
(5) Webhooks: it opens the delivery of any webhook job that ended on a path that did not, and
publishes deliveries whose attempt died with its worker (lease over) or whose message is overdue
(models/webhooks.py). A duplicate message is harmless: the claim lets only one delivery run a job.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable

import redis
import structlog
from sqlalchemy.engine import Engine

from models.db import session_scope, utcnow
from models.lifecycle import due_for_publish, mark_published, reclaim_expired
from models.popped import Lost, PoppedPolicy, forget, lost_in_pop
from models.queue import BATCH_QUEUE_BY_KIND
from models.webhooks import due_for_republish, ended_without_delivery, open_delivery, take_opened
from worker.flights import end_stranded

log = structlog.get_logger("genq.sweeper")
LOCK_KEY = "genq:sweeper:leader"


class Sweeper:
    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        publish: Callable[[str, str, float], None],
        *,
        publish_webhook: Callable[[str, float], None] | None = None,
        interval_s: float,
        redispatch_after_s: int,
        batches: Callable[[], dict[str, int]] | None = None,
        reserved: Callable[[], int] | None = None,
        popped: PoppedPolicy | None = None,
    ):
        self.engine, self.redis, self.publish = engine, client, publish
        #: expires, stops and finalizes batches (worker/batches.py `sweep_batches`)
        self.batches = batches
        self.publish_webhook = publish_webhook
        #: gives back the unacked messages of dead consumers (worker/tasks.py `restore_reserved`)
        self.reserved = reserved
        #: how the messages a killed consumer popped are looked for (models/popped.py)
        self.popped = popped or PoppedPolicy()
        self.interval_s, self.redispatch_after_s = interval_s, redispatch_after_s
        self.name = uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> dict[str, int]:
        """One sweep; returns how many jobs were reclaimed and published."""
        restored = self.restore_reserved()
        with session_scope(self.engine) as session:
            reclaimed = reclaim_expired(session)
        end_stranded(self.engine)  # response cache: followers of a leader whose worker died
        busy = self.busy_batch_kinds()
        lost = self.lost_in_pop()
        with session_scope(self.engine) as session:
            # a job just reclaimed is also unpublished: once in the list, one message
            due = dict.fromkeys(
                reclaimed
                + lost.jobs
                + due_for_publish(
                    session, redispatch_after_s=self.redispatch_after_s, busy_batch_kinds=busy
                )
            )
        published = []
        for job_id, kind, batch in due:
            try:
                self.publish(job_id, kind, 0, batch)
            except Exception as exc:  # the broker is still down: the next sweep tries again
                log.warning("sweeper.publish_failed", job_id=job_id, error=type(exc).__name__)
                break
            published.append(job_id)
        if published:
            with session_scope(self.engine) as session:
                mark_published(session, job_ids=published)
        if len(published) == len(due):  # all the popped messages found are out again
            forget(self.redis, lost.settled)
        if reclaimed or published:
            log.warning("sweeper.redispatched", reclaimed=len(reclaimed), published=len(published))
        swept = self.batches() if self.batches is not None else {}
        if self.publish_webhook is not None:
            swept["webhooks"] = self.sweep_webhooks()
        return {
            "restored": restored,
            "lost_in_pop": len(lost.jobs),
            "reclaimed": len(reclaimed),
            "published": len(published),
            **swept,
        }

    def restore_reserved(self) -> int:
        """First, so the jobs of a dead worker's messages count as waiting in their queues."""
        if self.reserved is None:
            return 0
        try:
            restored = self.reserved()
        except Exception as exc:  # Redis or its connection pool busy: the next sweep tries again
            log.warning("sweeper.restore_failed", error=type(exc).__name__)
            return 0
        if restored:
            log.warning("sweeper.restored", count=restored)
        return restored

    def lost_in_pop(self) -> Lost:
        """While a killed consumer's death is noted (worker/tasks.py `restore_reserved`): the
        jobs whose message it popped and had not yet recorded (models/popped.py); a failure
        leaves them to the next sweep."""
        try:
            with session_scope(self.engine) as session:
                lost = lost_in_pop(session, self.redis, self.popped)
        except Exception as exc:
            log.warning("sweeper.lost_check_failed", error=type(exc).__name__)
            return Lost()
        if lost.jobs:
            log.warning("sweeper.lost_in_pop", count=len(lost.jobs))
        return lost

    def busy_batch_kinds(self) -> list[str]:
        """The kinds whose batch lane still holds messages (one LLEN each, one round trip):
        their batch jobs are waiting their turn, not lost."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in BATCH_QUEUE_BY_KIND.values():
            pipe.llen(queue)
        return [
            kind for kind, held in zip(BATCH_QUEUE_BY_KIND, pipe.execute(), strict=True) if held
        ]

    def sweep_webhooks(self) -> int:
        """Open the deliveries missed by a finishing path, then publish every delivery that is
        due and not taken; how many were published."""
        with session_scope(self.engine) as session:
            for job in ended_without_delivery(session, before=utcnow()):
                open_delivery(
                    session,
                    job_id=job.id,
                    key_id=job.key_id,
                    status=job.status,
                    url=job.webhook_url,
                )
            opened = take_opened(session)
        if opened:
            log.warning("sweeper.webhooks_opened", count=len(opened))
        with session_scope(self.engine) as session:
            due = due_for_republish(session)
        published = 0
        for delivery_id in dict.fromkeys(opened + due):
            try:
                self.publish_webhook(delivery_id, 0)
            except Exception as exc:  # the broker is still down: the next sweep tries again
                log.warning(
                    "sweeper.publish_failed", webhook_id=delivery_id, error=type(exc).__name__
                )
                break
            published += 1
        if due:
            log.warning("sweeper.webhooks_redispatched", count=len(due))
        return published

    def _lead_once(self) -> None:
        lock = self.redis.lock(LOCK_KEY, timeout=max(self.interval_s * 4, 10), blocking=False)
        if not lock.acquire():
            return
        try:
            self.sweep_once()
        finally:
            # it may have expired during a long sweep; then another worker sweeps next
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._lead_once()
            except Exception as exc:  # Redis or the database restarting: keep going
                log.warning("sweeper.failed", error=type(exc).__name__)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="genq-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
