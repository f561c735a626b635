"""`genq submit --stream`: print a job's text as it is generated, from its event stream.

The text goes to stdout as `delta` events arrive; a `retry` (a new attempt starts over) is said
on stderr and the new attempt's text starts on a new line. A dropped connection is resumed
with `Last-Event-ID`, so nothing is printed twice. The stream's last event, `done`, is the job.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

import httpx

from cli.client import ClientError, GenqClient, _describe
from models.jsontext import loads

#: reconnects in a row without a new event before giving up
MAX_RECONNECTS = 8


@dataclass
class Event:
    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events from the body's lines (comments skipped)."""
    current = Event()
    for line in lines:
        if not line:
            if current.data or current.id is not None:
                yield current
            current = Event()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.event = value
        elif name == "data":
            current.data.append(value)
        elif name == "id":
            current.id = value


@dataclass
class Follower:
    """Reads one job's events until `done`, reconnecting after drops."""

    client: GenqClient
    job_id: str
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    last_id: str | None = None
    printed: bool = False

    def follow(self) -> dict:
        """The finished job (the `done` event), having printed its text on the way."""
        failures = 0
        while True:
            try:
                job = self._read_once()
            except httpx.HTTPError as exc:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise ClientError(
                        f"the event stream keeps failing ({type(exc).__name__})"
                    ) from None
                time.sleep(min(0.2 * 2**failures, 5))
                continue
            if job is not None:
                return job
            failures = 0  # the server closed without `done`: resume where we are

    def _read_once(self) -> dict | None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        path = f"/v1/jobs/{self.job_id}/events"
        timeout = httpx.Timeout(30, read=60)  # keep-alive comments come every 15 s at most
        with self.client.http.stream("GET", path, headers=headers, timeout=timeout) as answer:
            if answer.status_code >= 400:
                answer.read()
                raise ClientError(_describe(answer))
            for event in parse_events(answer.iter_lines()):
                self.last_id = event.id or self.last_id
                if (job := self._show(event)) is not None:
                    return job
        return None

    def _show(self, event: Event) -> dict | None:
        data = loads("\n".join(event.data) or "{}")
        if event.event == "delta":
            self.out.write(data["text"])
            self.out.flush()
            self.printed = True
        elif event.event == "retry":
            self.err.write(f"\n[attempt {data['attempt']} on {data['model']}: starting over]\n")
            if self.printed:
                self.out.write("\n")
            self.printed = False
        elif event.event == "done":
            if self.printed:
                self.out.write("\n")
                self.out.flush()
            return data
        return None
