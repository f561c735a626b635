"""`genq submit-batch FILE`: a JSON Lines file of job requests, sent 100 at a time.

Every line is checked before anything is sent, so a typo on line 900 does not leave 800 jobs
submitted; each chunk is one `POST /v1/jobs/batch` (all or nothing), with its own
Idempotency-Key `K-<chunk>` when a key is given, so re-running the command after a failure
submits only what was not accepted before. Jobs of chunks accepted before a refusal are
real jobs: the refusal carries them, so the command can still print their ids.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from cli.client import ClientError, GenqClient
from cli.render import console, fail

#: jobs per request: the API's maximum
CHUNK = 100
#: how the API names a job of a batch in its reasons: `jobs.3: …`
BATCH_INDEX = re.compile(r"\bjobs\.(\d+)")


def read_jobs(source: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, job request) of a JSON Lines file (`-` = stdin); blank lines are skipped."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read {source}: {exc.strerror}") from None
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except ValueError as exc:
            raise fail(f"{source} line {number}: not JSON ({exc.msg}); nothing was sent") from None
        if not isinstance(job, dict):
            raise fail(f"{source} line {number}: a job must be a JSON object; nothing was sent")
        jobs.append((number, job))
    if not jobs:
        raise fail(f"{source} holds no jobs")
    return jobs


class BatchRefused(Exception):
    """A chunk was refused: the reason in one line, and the jobs accepted before it."""

    def __init__(self, reason: str, accepted: list[dict]):
        super().__init__(reason)
        self.accepted = accepted


def submit_all(
    client: GenqClient, jobs: list[tuple[int, dict[str, Any]]], *, idempotency_key: str | None
) -> list[dict]:
    """Send the jobs chunk by chunk; a refusal names the file's line and what was accepted."""
    accepted: list[dict] = []
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start : start + CHUNK]
        key = f"{idempotency_key}-{start // CHUNK}" if idempotency_key else None
        try:
            accepted += client.submit_batch([job for _, job in chunk], idempotency_key=key)
        except ClientError as exc:
            reason = _refused(str(exc), chunk, accepted=len(accepted))
            raise BatchRefused(reason, accepted) from None
        console.print(f"submitted {len(accepted)}/{len(jobs)} jobs")
    return accepted


def _refused(reason: str, chunk: list[tuple[int, dict[str, Any]]], *, accepted: int) -> str:
    """The API's reason with `jobs.i` turned into the file's line number."""
    lines = [number for number, _ in chunk]
    reason = BATCH_INDEX.sub(lambda m: f"line {lines[int(m.group(1))]}", reason)
    if not accepted:
        return f"{reason}; no job was accepted"
    return (
        f"{reason}; the {accepted} jobs before line {lines[0]} were accepted (their ids are on "
        "stdout), none from there on"
    )
