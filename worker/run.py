"""What one run of one job knows between attempts, and how a run stops early (worker/runner.py).

A run is one claim of the job: it ends it, loses the claim, or gives it back to the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from models.catalogue import ModelSpec
from models.schemas import JobCreate
from worker.moderation import Screen
from worker.retry import Decision, RetryCounts


def said_by(run: Run) -> list[dict]:
    """What a conversation's job adds besides the reply: its messages after the system message
    and the stored turns it sent (the user message, or tool results)."""
    messages = run.request.chat_messages()
    first = (messages[0]["role"] == "system") + (run.context or {}).get("turns_sent", 0)
    return messages[first:]


class Cancelled(Exception):
    pass


class JobTimeout(Exception):
    pass


@dataclass(kw_only=True)
class Run:
    """What one run of one job knows between attempts."""

    job_id: str
    token: str
    #: whose key pays (from the claim)
    key_id: str
    kind: str
    worker: str
    request: JobCreate
    models: list[ModelSpec]
    attempts_before: int
    deadline_at: datetime | None
    #: prompt + max_tokens when a model of the run has a tokens-per-minute limit, else 0
    tokens_estimate: int
    #: what the job holds against its key's budget (from submit until the job ends; a billed
    #: failed attempt that is retried holds its cost again, for the next attempt: recording.py)
    reserved_usd: Decimal
    #: a conversation's job: its turns are stored when it succeeds
    conversation_id: str | None = None
    #: its `context` (how many stored turns it sent)
    context: dict | None = None
    #: whether its end opens a webhook delivery (its end then needs a transaction)
    webhook: bool = True
    #: a batch's job: republished to the batch lane, and its end may finish the batch
    batch_id: str | None = None
    #: its moderation (worker/moderation.py), None when off
    screen: Screen | None = None
    #: the job's failed attempts over all its runs, as the retry policy counts them
    counts: RetryCounts = field(default_factory=RetryCounts)
    #: the retry policy's decision on the last failure, and which attempt of this run failed
    decided: tuple[int, Decision] | None = None
    failures_here: int = 0
    attempts_here: int = 0

    @property
    def spec(self) -> ModelSpec:
        return self.models[0]

    @property
    def number(self) -> int:
        return self.attempts_before + self.attempts_here + 1
