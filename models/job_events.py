"""A job's live events: the Redis Stream the worker writes and `GET /v1/jobs/{id}/events` reads.

One stream per job (`genq:events:<job id>`), written only for jobs submitted with
`"stream": true`. Each entry has two fields: `e` (the event: `status`, `delta`, `retry`, or the
internal `end`, written once the job's end is committed) and `d` (its JSON data). The stream is
capped (`XADD MAXLEN ~ GENQ_STREAM_MAX_EVENTS`) and expires `GENQ_STREAM_TTL_S` after its last
entry, so a stream whose worker died never outlives its TTL.

Event ids on the wire are the entry ids (`1733059200000-0`). Events the API derives from the
database (a status no worker wrote, `done`) carry `<last entry id>:<n>`, `n` counting up over
the connection and its reconnects, so every id a client sees is new and `Last-Event-ID`
resumes after exactly what it got.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

STATUS, DELTA, RETRY, DONE = "status", "delta", "retry", "done"
#: written by the worker after the job's end is committed: the API answers `done` from the DB
END = "end"
EVENT_FIELD, DATA_FIELD = "e", "d"
#: the position before every entry
ORIGIN = "0-0"
_ID = re.compile(r"^(\d{1,20}-\d{1,20})(?::(\d{1,12}))?$")


def stream_key(job_id: str) -> str:
    return f"genq:events:{job_id}"


def encode(event: str, data: dict) -> dict[str, str]:
    """An entry's fields."""
    return {EVENT_FIELD: event, DATA_FIELD: json.dumps(data, separators=(",", ":"))}


def decode(fields: dict) -> tuple[str, dict]:
    """(event, data) of an entry read with `decode_responses=True`."""
    return fields.get(EVENT_FIELD, ""), json.loads(fields.get(DATA_FIELD) or "{}")


@dataclass(frozen=True)
class Position:
    """Where a client is: after stream entry `entry`, and after `derived` derived events."""

    entry: str = ORIGIN
    derived: int = 0

    @classmethod
    def parse(cls, last_event_id: str | None) -> Position:
        """From a `Last-Event-ID` header; an id genq never sent starts from the beginning."""
        match = _ID.match((last_event_id or "").strip())
        if match is None:
            return cls()
        return cls(match.group(1), int(match.group(2) or 0))

    def next_derived(self) -> tuple[Position, str]:
        """The position after one more derived event, and that event's id."""
        moved = Position(self.entry, self.derived + 1)
        return moved, f"{self.entry}:{moved.derived}"

    def after(self, entry_id: str) -> Position:
        return Position(entry_id, self.derived)
