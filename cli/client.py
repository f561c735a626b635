"""A small HTTP client for the genq API, used by `genq submit`, `status`, `chat`, `batch` and
`dev`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from models.jsontext import loads

FINISHED = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """One line a user can act on, built from the API's problem+json."""


class GenqClient:
    """Answers are read with money as Decimal, so amounts print exactly as the API sent them."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30):
        self.http = httpx.Client(
            base_url=base_url, timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"}
        )

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(
                f"cannot reach the genq API at {self.http.base_url}: {type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            raise ClientError(_describe(response))
        return response

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return loads(self._call("POST", "/v1/jobs", json=body, headers=headers).content)

    def submit_batch(
        self, bodies: list[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> list[dict]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer = self._call("POST", "/v1/jobs/batch", json={"jobs": bodies}, headers=headers)
        return loads(answer.content)["data"]

    def create_conversation(self, body: dict[str, Any]) -> dict:
        return loads(self._call("POST", "/v1/conversations", json=body).content)

    def send_message(self, conversation_id: str, content: str) -> dict:
        """The queued job answering `content` in the conversation."""
        path = f"/v1/conversations/{conversation_id}/messages"
        return loads(self._call("POST", path, json={"content": content}).content)

    def job(self, job_id: str) -> dict:
        return loads(self._call("GET", f"/v1/jobs/{job_id}").content)

    def usage(self, group_by: str = "model") -> dict:
        return loads(self._call("GET", "/v1/usage", params={"group_by": group_by}).content)

    def stats(self) -> dict:
        return loads(self._call("GET", "/v1/stats").content)

    def upload_batch_file(self, path: Path) -> dict:
        """`POST /v1/files` (purpose `batch`), the file streamed from disk."""
        with path.open("rb") as handle:
            files = {"file": (path.name, handle, "application/jsonl")}
            answer = self._call("POST", "/v1/files", data={"purpose": "batch"}, files=files)
        return loads(answer.content)

    def create_batch(self, body: dict[str, Any]) -> dict:
        return loads(self._call("POST", "/v1/batches", json=body).content)

    def batch(self, batch_id: str) -> dict:
        return loads(self._call("GET", f"/v1/batches/{batch_id}").content)

    def batches(self, *, limit: int, after: str | None) -> dict:
        params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
        return loads(self._call("GET", "/v1/batches", params=params).content)

    def cancel_batch(self, batch_id: str) -> dict:
        return loads(self._call("POST", f"/v1/batches/{batch_id}/cancel").content)

    def file_content(self, file_id: str) -> Iterator[bytes]:
        """A file's bytes in pieces, as the API streams them."""
        try:
            with self.http.stream("GET", f"/v1/files/{file_id}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(_describe(response))
                yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise ClientError(
                f"cannot reach the genq API at {self.http.base_url}: {type(exc).__name__}"
            ) from None

    def image(self, url: str) -> bytes:
        return self._call("GET", url).content

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 300,
        interval_s: float = 0.25,
        on_poll: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll until the job finishes; raises ClientError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_poll:
                on_poll(job)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise ClientError(f"job {job_id} still {job['status']} after {timeout_s:.0f}s")
            time.sleep(interval_s)

    def close(self) -> None:
        self.http.close()


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{response.status_code} {body.get('title', '')}: {body.get('detail', '')}"
    except ValueError:
        return f"{response.status_code} {response.reason_phrase}"
