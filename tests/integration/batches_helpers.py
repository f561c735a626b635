"""Helpers of the Files and Batches tests: lines, uploads, and what the database holds."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from models.batches import Batch
from models.db import get_engine
from models.jobs import Job

CHAT = "/v1/chat/completions"
IMAGES = "/v1/images/generations"


def chat_line(custom_id: str, content: str = "Say hi", **body: Any) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(*lines: dict | str) -> bytes:
    return b"".join(
        (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines
    )


def upload(client, key: dict, payload: bytes, name: str = "in.jsonl") -> str:
    answer = client.post(
        "/v1/files", headers=key, files={"file": (name, payload)}, data={"purpose": "batch"}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def create(client, key: dict, file_id: str, endpoint: str = CHAT, **extra: Any):
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    return client.post("/v1/batches", headers=key, json=body)


def counts(database_url: str) -> tuple[int, int]:
    """(batches, batch jobs) stored."""
    with get_engine(database_url).connect() as conn:
        batches = conn.execute(select(func.count()).select_from(Batch.__table__)).scalar_one()
        jobs = conn.execute(
            select(func.count()).where(Job.__table__.c.batch_id.is_not(None))
        ).scalar_one()
    return batches, jobs
