"""Bulk-inserted job rows (COPY on PostgreSQL) read back as the same rows an INSERT stores."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import insert, select

from models.bulk_insert import insert_jobs
from models.db import get_engine, session_scope, utcnow
from models.jobs import Job
from models.keys import create_key


def _row(key_id: str, job_id: str) -> dict:
    now = utcnow()
    return {
        "id": job_id,
        "key_id": key_id,
        "kind": "text",
        "status": "queued",
        "model": "gpt-4.1-nano",
        "request": {"kind": "text", "messages": [{"role": "user", "content": 'é "q" \\ \t\n'}]},
        "metadata": {},
        "routing": {"mode": "policy", "estimate_usd": "0.0000089", "candidates": [{"m": 1}]},
        "estimated_cost_usd": Decimal("0.00000890001"),
        "reserved_usd": Decimal("0.0000089"),
        "cost_usd": Decimal(0),
        "attempts": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "image_count": 0,
        "cancel_requested": False,
        "created_at": now,
        "published_at": now,
        "deadline_at": now + timedelta(hours=24),
        "webhook_url": None,
        "batch_id": "batch_x",
        "custom_id": "line\ttab",
        "batch_line": 7,
    }


def test_bulk_rows_read_back_like_inserted_ones(database_url):
    engine = get_engine(database_url)
    with session_scope(engine) as session:
        key, _ = create_key(session, name="bulk")
        first, second = _row(key.id, "a" * 32), _row(key.id, "b" * 32)
        second["routing"] = first["routing"]  # lines of one plan share its record
        insert_jobs(session, [first, second])
        session.execute(insert(Job.__table__), [_row(key.id, "c" * 32)])
        insert_jobs(session, [])
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(Job.__table__).order_by("id"))]
    assert [r.pop("id") for r in rows] == ["a" * 32, "b" * 32, "c" * 32]
    for row in rows:
        row.pop("created_at"), row.pop("published_at"), row.pop("deadline_at")
    assert rows[0] == rows[2] and rows[1] == rows[2]
    assert rows[0]["estimated_cost_usd"] == Decimal("0.0000089")  # quantized like Money
    assert rows[0]["request"]["messages"][0]["content"] == 'é "q" \\ \t\n'
